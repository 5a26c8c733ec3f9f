"""Recognising JAX's out-of-memory errors (also from a child, by name and message).

Example:
    >>> is_out_of_memory(None, "jaxlib.xla_extension.XlaRuntimeError", "RESOURCE_EXHAUSTED: ...")
    True
"""

from __future__ import annotations

__all__ = ["is_out_of_memory"]

_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory")


def is_out_of_memory(error: BaseException | None, type_name: str, message: str) -> bool:
    """``RESOURCE_EXHAUSTED`` from XLA (``JaxRuntimeError``), or a host ``MemoryError``."""
    if isinstance(error, MemoryError):
        return True
    short = type_name.rsplit(".", 1)[-1]
    if short == "MemoryError":
        return True
    if short in ("JaxRuntimeError", "XlaRuntimeError"):
        return any(marker in message for marker in _OOM_MARKERS)
    return short == "RuntimeError" and "RESOURCE_EXHAUSTED" in message
