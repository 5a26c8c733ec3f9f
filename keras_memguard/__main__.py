"""``python -m keras_memguard`` runs the ``memguard`` command line."""

import sys

from keras_memguard.cli.main import main

sys.exit(main())
