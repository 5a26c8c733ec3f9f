"""JAX's device boundary: the same module names as ``tensorflow/`` and ``torch/``.

Importing this package imports no JAX; each module imports it only where it must.
"""

from keras_memguard.backends.jax.memory import ADAPTER

__all__ = ["ADAPTER"]
