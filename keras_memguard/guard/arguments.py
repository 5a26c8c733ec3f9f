"""``MemGuardCallback``'s arguments checked at construction: a bad one fails there.

Each check raises ``ValueError`` naming the argument, echoing the value and saying the
accepted forms (``errors.invalid_argument``).

Example:
    >>> check_seconds(0.1, "check_interval")
    0.1
    >>> check_seconds(-1, "check_interval")
    Traceback (most recent call last):
    ValueError: Invalid value for argument `check_interval`...
"""

from __future__ import annotations

import math
from typing import Any

from keras_memguard.errors import invalid_argument
from keras_memguard.memory_snapshot import snapshot
from keras_memguard.probes import nvml
from keras_memguard.sizes import Size, parse_size

__all__ = [
    "ON_EXCEED",
    "check_choice",
    "check_gpu_fraction_has_totals",
    "check_non_negative_int",
    "check_seconds",
    "optional_size",
]

ON_EXCEED = ("stop", "raise", "warn")


def check_choice(value: Any, name: str, choices: tuple[Any, ...], expected: str) -> Any:
    """``value`` if it is one of ``choices`` (compared with ``==``)."""
    if value not in choices:
        raise invalid_argument(name, value, expected)
    return value


def check_seconds(value: Any, name: str) -> float:
    """A finite number of seconds >= 0, as a float."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (not math.isfinite(value) or value < 0)
    ):
        raise invalid_argument(name, value, "seconds as a number >= 0")
    return float(value)


def check_non_negative_int(value: Any, name: str) -> int:
    """An ``int`` >= 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid_argument(name, value, "an int >= 0")
    return value


def optional_size(value: Any, name: str, allow_fraction: bool = True) -> Size | None:
    """``None``, or the size ``parse_size`` reads from ``value``."""
    return None if value is None else parse_size(value, name=name, allow_fraction=allow_fraction)


def check_gpu_fraction_has_totals(size: Size | None) -> None:
    """A fractional ``max_gpu_memory`` where GPUs are set up and no total can be read."""
    if size is None or size.fraction is None or nvml.is_available():
        return
    devices = snapshot().gpus
    if devices and any(gpu.total is None for gpu in devices):
        raise invalid_argument(
            "max_gpu_memory",
            size.fraction,
            "bytes such as '12GiB' here",
            "a fraction needs each GPU's total: NVML (nvidia-ml-py) is not available and "
            "the framework reports no memory limit",
        )
