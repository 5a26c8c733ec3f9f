"""TensorFlow's device boundary: the modules every framework folder has (``base.MODULES``).

See :mod:`keras_memguard.backends.base` for what each module holds. Importing this
package imports no TensorFlow; each module imports it only where it must.
"""

from typing import Any

from keras_memguard.backends.base import moved_name
from keras_memguard.backends.tensorflow.memory import ADAPTER

__all__ = ["ADAPTER"]


def __getattr__(name: str) -> Any:  # the names of the old module, with a warning
    return moved_name(__name__, name)
