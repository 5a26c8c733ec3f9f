"""What the leak code needs to know of PyTorch's tensors: their type and sizes.

Example:
    >>> describe(torch.zeros(32, 8))
    ((32, 8), 'float32', 1024, 'cpu')

For the growth classifier (issue #27), :func:`compile_counter` counts ``torch.compile``
graphs (TorchDynamo's ``unique_graphs`` counter). Eager PyTorch (Keras's default on
torch) compiles nothing; Dynamo does not expose the input shapes that caused a graph.
"""

from __future__ import annotations

import sys
from typing import Any

from keras_memguard.backends.compiles import CompileLog
from keras_memguard.backends.torch import compat
from keras_memguard.compat import resolve

__all__ = ["DynamoGraphCounter", "cannot_travel", "compile_counter", "describe", "tensor_types"]


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


def _graphs() -> int:
    counters: Any = resolve(compat.DYNAMO_COUNTERS, loaded_only=True, warn=False)
    try:
        return int(counters["stats"]["unique_graphs"]) if counters is not None else 0
    except Exception:
        return 0


class DynamoGraphCounter(CompileLog):
    """Counts graphs TorchDynamo compiled since ``start()``."""

    def __init__(self) -> None:
        super().__init__("torch._dynamo counters")
        self._base = 0

    def start(self) -> None:
        self._base = _graphs()

    def poll(self) -> None:
        now = _graphs()
        for _ in range(now - self._base):
            self.record("torch.compile graph")
        self._base = now


def compile_counter() -> DynamoGraphCounter | None:
    """A counter of ``torch.compile`` graphs; ``None`` where TorchDynamo is not loaded."""
    if resolve(compat.DYNAMO_COUNTERS, loaded_only=True, warn=False) is None:
        return None
    return DynamoGraphCounter()
