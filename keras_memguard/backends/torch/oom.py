"""Recognising PyTorch's out-of-memory errors (also from a child, by name and message).

Example:
    >>> is_out_of_memory(None, "torch.OutOfMemoryError", "CUDA out of memory. Tried ...")
    True
"""

from __future__ import annotations

__all__ = ["is_out_of_memory"]

_OOM_MARKERS = ("CUDA out of memory", "CUDA error: out of memory", "can't allocate memory")


def is_out_of_memory(error: BaseException | None, type_name: str, message: str) -> bool:
    """``torch.OutOfMemoryError``, CUDA's out-of-memory error, or a host ``MemoryError``."""
    if isinstance(error, MemoryError):
        return True
    short = type_name.rsplit(".", 1)[-1]
    if short in ("OutOfMemoryError", "MemoryError"):
        return True
    if short in ("RuntimeError", "AcceleratorError"):
        return any(marker in message for marker in _OOM_MARKERS)
    return False
