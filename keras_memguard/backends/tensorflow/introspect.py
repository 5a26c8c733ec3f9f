"""What the leak code needs to know of TensorFlow's tensors: their types and sizes.

Example:
    >>> describe(tf.zeros([32, 8]))
    ((32, 8), 'float32', 1024, 'cpu:0')
"""

from __future__ import annotations

import sys
from typing import Any

from keras_memguard.backends.tensorflow import compat
from keras_memguard.compat import resolve

__all__ = ["cannot_travel", "describe", "tensor_types"]


def tensor_types() -> tuple[type, ...]:
    """Eager tensors and variables, whose buffers ``tracemalloc`` does not see."""
    if "tensorflow" not in sys.modules:
        return ()
    found = (resolve(compat.EAGER_TENSOR), resolve(compat.RESOURCE_VARIABLE))
    return tuple(kind for kind in found if kind is not None)


def describe(obj: Any) -> tuple[tuple[int | None, ...], str, int, str]:
    """``(shape, dtype, nbytes, device)`` of a TensorFlow tensor or variable."""
    shape = tuple(obj.shape.as_list())
    nbytes = int(obj.dtype.size * (obj.shape.num_elements() or 0))
    device = obj.device.rsplit("/", 1)[-1].lower().replace("device:", "") or "?"
    return shape, obj.dtype.name, nbytes, device


def cannot_travel(value: Any) -> str | None:
    """Why ``value`` cannot go to another process: tf.data's datasets and iterators."""
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(value).__mro__}
    if any(n.startswith("tensorflow.") and n.endswith("DatasetV2") for n in names):
        return "a tf.data.Dataset cannot be sent to another process"
    if any(n.startswith("tensorflow.") and "Iterator" in n for n in names):
        return "a tf.data iterator cannot be sent to another process"
    return None
