"""PyTorch introspection for the growth classifier: ``torch.compile`` graphs.

Eager PyTorch (Keras's default on torch) compiles nothing. Where ``torch.compile`` is
in use (``jit_compile=True``), TorchDynamo counts the graphs it compiled in
``torch._dynamo.utils.counters["stats"]["unique_graphs"]``; the input shapes that caused
them are not exposed, so none are reported.

Example:
    >>> counter = compile_counter()   # None unless torch._dynamo is loaded
"""

from __future__ import annotations

import sys
from typing import Any

from keras_memguard.backends.compiles import CompileLog

__all__ = ["DynamoGraphCounter", "compile_counter"]


def _graphs() -> int:
    utils: Any = sys.modules.get("torch._dynamo.utils")
    counters = getattr(utils, "counters", None)
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
    if "torch._dynamo" not in sys.modules:
        return None
    return DynamoGraphCounter()
