"""What an estimate is made of: named parts, each saying how it was obtained.

Pure data: no framework, no I/O. The model side (variables, optimizer state, gradients,
the step's temporaries, the runtime's fixed overhead) and the input side (shuffle
buffer, cache, prefetch, parallel calls, workers x queue) are ``EstimatePart``s of one
``MemoryEstimate``; a part that could not be obtained is ``Method.UNKNOWN`` with its
reason, never silently zero.

Example:
    >>> part = EstimatePart("variables", 4 * 2**20, Method.EXACT, "1,048,576 float32")
    >>> estimate = MemoryEstimate(parts=(part,), where="host")
    >>> estimate.known_bytes
    4194304
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from keras_memguard.sizes import format_bytes

__all__ = ["EstimatePart", "MemoryEstimate", "Method"]


class Method(enum.StrEnum):
    """How a part's figure was obtained, from most to least certain."""

    EXACT = "exact"  # counted from shapes and dtypes (variables, optimizer slots)
    COMPILED = "compiled"  # a compiler's buffer assignment (XLA memory_analysis)
    TRACED = "traced"  # a traced step under fake tensors (PyTorch)
    UPPER_BOUND = "upper bound"  # a figure the real peak stays below
    MEASURED = "measured"  # a real fit measured (calibration, or once per framework version)
    UNKNOWN = "unknown"  # not obtained: ``reason`` says why


@dataclass(frozen=True)
class EstimatePart:
    """One part of a fit's memory: its name, bytes (None when unknown), how, and why.

    ``side`` is ``"model"`` or ``"input"``; ``where`` is ``"host"`` or ``"device"``.
    """

    name: str
    bytes: int | None
    method: Method
    detail: str = ""
    side: str = "model"
    where: str = "host"

    def __post_init__(self) -> None:
        if self.method is Method.UNKNOWN and not self.detail:
            raise ValueError(f"estimate part {self.name!r} is unknown without a reason")
        if self.method is not Method.UNKNOWN and self.bytes is None:
            raise ValueError(f"estimate part {self.name!r} has no bytes but is not unknown")

    def __str__(self) -> str:
        figure = "unknown" if self.bytes is None else format_bytes(self.bytes)
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.name}: {figure} [{self.method.value}]{detail}"


@dataclass(frozen=True)
class MemoryEstimate:
    """A fit's predicted peak memory: its parts, and the totals of the known ones.

    ``batch_size`` is the batch the step parts were estimated for (None where no step
    part depends on it); ``calibrated_bytes`` is set only by a calibration run.
    """

    parts: tuple[EstimatePart, ...]
    where: str = "host"
    batch_size: int | None = None
    backend: str | None = None
    calibrated_bytes: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def known_bytes(self) -> int:
        """The sum of every part whose figure is known (a lower bound if any is not)."""
        return sum(part.bytes or 0 for part in self.parts if part.bytes is not None)

    @property
    def unknown(self) -> tuple[EstimatePart, ...]:
        return tuple(part for part in self.parts if part.bytes is None)

    def part(self, name: str) -> EstimatePart | None:
        return next((part for part in self.parts if part.name == name), None)

    def __str__(self) -> str:
        head = f"predicted peak ({self.where}): at least {format_bytes(self.known_bytes)}"
        if not self.unknown:
            head = f"predicted peak ({self.where}): {format_bytes(self.known_bytes)}"
        if self.calibrated_bytes is not None:
            head += f", calibrated {format_bytes(self.calibrated_bytes)}"
        return "\n".join([head, *(f"  {part}" for part in self.parts)])
