"""Recognising TensorFlow's out-of-memory errors (also from a child, by name and message).

Example:
    >>> is_out_of_memory(None, "tensorflow.python.framework.errors_impl.ResourceExhaustedError", "")
    True
"""

from __future__ import annotations

__all__ = ["is_out_of_memory"]


def is_out_of_memory(error: BaseException | None, type_name: str, message: str) -> bool:
    """``ResourceExhaustedError`` (the allocator's OOM) or a host ``MemoryError``."""
    short = type_name.rsplit(".", 1)[-1]
    return short in ("ResourceExhaustedError", "MemoryError") or isinstance(error, MemoryError)
