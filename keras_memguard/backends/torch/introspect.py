"""What the leak code needs to know of PyTorch's tensors: their type and sizes.

Example:
    >>> describe(torch.zeros(32, 8))
    ((32, 8), 'float32', 1024, 'cpu')
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["cannot_travel", "describe", "tensor_types"]


def tensor_types() -> tuple[type, ...]:
    """``torch.Tensor`` (parameters derive from it) once torch is loaded."""
    torch = sys.modules.get("torch")
    kind = getattr(torch, "Tensor", None)
    return (kind,) if isinstance(kind, type) else ()


def describe(obj: Any) -> tuple[tuple[int, ...], str, int, str]:
    """``(shape, dtype, nbytes, device)`` of a torch tensor."""
    nbytes = int(obj.element_size() * obj.nelement())
    return tuple(obj.shape), str(obj.dtype).replace("torch.", ""), nbytes, str(obj.device)


def cannot_travel(value: Any) -> str | None:
    """Why ``value`` cannot go to another process: nothing known here (arrays pickle)."""
    return None
