"""TensorFlow's device boundary: the same module names as ``jax/`` and ``torch/``.

Importing this package imports no TensorFlow; each module imports it only where it must.
"""

from keras_memguard.backends.tensorflow.memory import ADAPTER

__all__ = ["ADAPTER"]
