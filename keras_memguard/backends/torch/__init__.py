"""PyTorch's device boundary: the same module names as ``tensorflow/`` and ``jax/``.

Importing this package imports no torch; each module imports it only where it must.
"""

from keras_memguard.backends.torch.memory import ADAPTER

__all__ = ["ADAPTER"]
