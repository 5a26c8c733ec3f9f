"""What the leak code needs to know of JAX's arrays: their type and sizes.

Example:
    >>> describe(jnp.zeros((32, 8)))
    ((32, 8), 'float32', 1024, 'TFRT_CPU_0')
"""

from __future__ import annotations

import sys
from typing import Any

from keras_memguard.backends.jax import compat
from keras_memguard.compat import resolve

__all__ = ["cannot_travel", "describe", "tensor_types"]


def tensor_types() -> tuple[type, ...]:
    """JAX's concrete array type (``jax.Array`` is an ABC), whose buffers are XLA's."""
    if "jax" not in sys.modules:
        return ()
    kind = resolve(compat.ARRAY_IMPL)
    return (kind,) if kind is not None else ()


def describe(obj: Any) -> tuple[tuple[int, ...], str, int, str]:
    """``(shape, dtype, nbytes, devices)`` of a JAX array (0 bytes once deleted)."""
    nbytes = 0 if obj.is_deleted() else int(obj.nbytes)  # donated or deleted: no buffer
    device = ",".join(sorted(str(d) for d in obj.devices()))
    return tuple(obj.shape), str(obj.dtype), nbytes, device


def cannot_travel(value: Any) -> str | None:
    """Why ``value`` cannot go to another process: nothing known here (arrays pickle)."""
    return None
