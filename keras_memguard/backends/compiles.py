"""What every framework's compile counter records: new traces/compilations and their shapes.

Each ``keras_memguard.backends.<framework>.introspect`` module offers
``compile_counter()``: a :class:`CompileLog` subclass that counts from ``start()`` to
``stop()``, or ``None`` where the framework exposes no count. Nothing here imports a
framework.

Example:
    >>> log = CompileLog("jax.monitoring")
    >>> log.record("train_step", ("float32[32,8]",))
    >>> log.count, log.shapes
    (1, ['train_step: float32[32,8]'])
"""

from __future__ import annotations

import collections

__all__ = ["MAX_SHAPES", "CompileLog"]

MAX_SHAPES = 8  # the input shapes of the latest traces kept


class CompileLog:
    """Counts compilations by function and keeps the latest input shapes."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0
        self.functions: collections.Counter[str] = collections.Counter()
        self.shapes: list[str] = []

    def record(self, function: str, shapes: tuple[str, ...] | None = None) -> None:
        """One new compilation of ``function`` (for inputs of ``shapes``, if known)."""
        self.count += 1
        self.functions[function] += 1
        if shapes is not None:
            self.note_shapes(function, shapes)

    def note_shapes(self, function: str, shapes: tuple[str, ...]) -> None:
        """The input shapes of a trace of ``function`` (which may be counted elsewhere)."""
        self.shapes.append(f"{function}: {', '.join(shapes) or '()'}")
        del self.shapes[:-MAX_SHAPES]

    def start(self) -> None:
        """Starts counting (a no-op where counting needs no hook)."""

    def poll(self) -> None:
        """Brings the count up to date (where counts are read, not pushed)."""

    def stop(self) -> None:
        """Stops counting and removes any hook."""
