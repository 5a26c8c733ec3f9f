"""The ``memguard`` command line: ``doctor`` and ``report``."""
