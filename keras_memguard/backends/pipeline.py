"""What the frameworks' ``input_pipeline.py`` modules share: their answer and byte counting.

Each framework folder has an ``input_pipeline.py`` with ``pipeline_buffers(x)``: the
buffers its own input pipeline (``tf.data``, torch's ``DataLoader``; JAX has none)
holds, as ``Buffer``s, or ``None`` when ``x`` is not that framework's pipeline.
``pipeline_buffers(x)`` here picks the module from ``x``'s type without importing any
framework. ``estimate.inputs`` turns the answers into estimate parts.

Example:
    >>> pipeline_buffers(dataset.shuffle(12_000).batch(32))[1]
    Buffer(name='shuffle buffer', bytes=7225344000, method='exact', detail='12,000 x 588.0 KiB')
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Buffer", "dtype_bytes", "pipeline_buffers", "structure_bytes"]

# The framework whose input_pipeline module reads an object, by its type's module.
_FRAMEWORKS = {"tensorflow": "tensorflow", "torch": "torch", "grain": "jax"}


@dataclass(frozen=True)
class Buffer:
    """Memory an input pipeline holds: bytes (``None``: unknown), how known, and why.

    ``method`` is an ``estimate.Method`` value: ``"exact"``, ``"upper bound"`` or
    ``"unknown"`` (then ``detail`` says why).
    """

    name: str
    bytes: int | None
    method: str
    detail: str = ""

    @classmethod
    def unknown(cls, name: str, why: str) -> Buffer:
        return cls(name, None, "unknown", why)


def dtype_bytes(dtype: Any) -> int | None:
    """Bytes per value of a dtype (``"float32"``, ``"bfloat16"``, ``tf.int8``, ...).

    Example:
        >>> dtype_bytes("bfloat16"), dtype_bytes("bool"), dtype_bytes("string")
        (2, 1, None)
    """
    name = str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1].lower()
    if name == "bool":
        return 1
    found = re.search(r"(\d+)", name)
    if found is None or not re.match(r"^(u?int|float|bfloat|complex)", name):
        return None
    return max(1, int(found.group(1)) // 8)


def leaves(structure: Any) -> list[Any]:
    """The arrays of a dict/list/tuple structure, in order."""
    if structure is None:
        return []
    if isinstance(structure, dict):
        return [leaf for value in structure.values() for leaf in leaves(value)]
    if isinstance(structure, (list, tuple)) and not hasattr(structure, "shape"):
        return [leaf for value in structure for leaf in leaves(value)]
    return [structure]


def leaf_bytes(leaf: Any) -> int | None:
    """Bytes of one array or tensor (NumPy, TF, JAX, torch); ``None`` if it has no size."""
    nbytes = getattr(leaf, "nbytes", None)
    if isinstance(nbytes, int) and not isinstance(nbytes, bool):
        return nbytes
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
        return None
    try:
        values = math.prod(int(d) for d in shape)
    except (TypeError, ValueError):  # a dimension known only at run time
        return None
    size = dtype_bytes(dtype)
    return None if size is None else values * size


def structure_bytes(structure: Any) -> int | None:
    """Bytes of every array in a dict/list/tuple structure; ``None`` if one has no size.

    Example:
        >>> structure_bytes((numpy.zeros((32, 10), "float32"), numpy.zeros(32, "int64")))
        1536
    """
    total = 0
    for leaf in leaves(structure):
        size = leaf_bytes(leaf)
        if size is None:
            return None
        total += size
    return total


def pipeline_buffers(x: Any) -> tuple[Buffer, ...] | None:
    """The buffers of a framework's input pipeline; ``None`` if ``x`` is none of them."""
    framework = _FRAMEWORKS.get(type(x).__module__.split(".")[0])
    if framework is None:
        return None
    module = importlib.import_module(f"keras_memguard.backends.{framework}.input_pipeline")
    buffers: tuple[Buffer, ...] | None = module.pipeline_buffers(x)
    return buffers
