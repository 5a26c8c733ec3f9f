"""Memory sizes as users write them: bytes, ``"12GiB"``, ``"512MB"``, ``0.8`` or ``"80%"``.

Every public parameter that takes an amount of memory goes through :func:`parse_size`,
so the accepted forms and the error messages are the same everywhere.

Example:
    >>> parse_size("512MiB", name="max_process_memory").resolve(None)
    536870912
    >>> parse_size("80%", name="max_process_memory").resolve(1000)
    800
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

from keras_memguard.errors import invalid_argument

__all__ = ["MIN_BYTES", "Size", "format_bytes", "parse_size"]

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
_PERCENT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*$")

# A bare int below this many bytes is refused as a likely unit slip (8 meant as "8GiB").
MIN_BYTES = 2**20

ACCEPTED_FORMS = (
    "bytes as an int of at least 1 MiB (e.g. 2**30), a size string with a unit "
    "('512MB', '12GiB'; units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), "
    "a fraction in (0, 1] such as 0.8, or a percentage such as '80%'"
)


@dataclass(frozen=True)
class Size:
    """An amount of memory: absolute ``bytes``, or a ``fraction`` of some total.

    Exactly one of the two fields is set. A fraction is resolved against the total
    that gives it meaning (the effective memory limit, a GPU's total memory).
    """

    bytes: int | None = None
    fraction: float | None = None

    def resolve(self, total: int | None) -> int | None:
        """Returns the size in bytes; ``None`` for a fraction of an unknown total."""
        if self.bytes is not None:
            return self.bytes
        if total is None or self.fraction is None:
            return None
        return int(total * self.fraction)

    def __str__(self) -> str:
        if self.bytes is not None:
            return format_bytes(self.bytes)
        return f"{(self.fraction or 0) * 100:g}%"


def _invalid(name: str, value: object, why: str = "", forms: str = ACCEPTED_FORMS) -> ValueError:
    return invalid_argument(name, value, forms, why)


def _fraction(name: str, value: object, fraction: float) -> Size:
    if not math.isfinite(fraction) or fraction <= 0:
        raise _invalid(name, value, "must be positive")
    if fraction > 1:
        raise _invalid(name, value, "a fraction cannot exceed 1 (100%)")
    return Size(fraction=fraction)


def _unit_slip(value: int, allow_fraction: bool) -> str:
    """Why a bare int below ``MIN_BYTES`` is refused, with the likely meaning."""
    if value == 1:
        guess = "1.0 (100%) or '1GiB'" if allow_fraction else "'1GiB'"
    elif value >= 1024:
        guess = f"'{value}MiB'"  # TensorFlow's memory_limit convention
    else:
        guess = f"'{value}GiB'"
    return f"a bare int is bytes, and below 1 MiB no bound makes sense; did you mean {guess}?"


def parse_size(
    value: object, *, name: str, allow_fraction: bool = True, forms: str | None = None
) -> Size:
    """Parses a user-given memory size; raises ``ValueError`` naming ``name`` if it is bad.

    A bare ``int`` is bytes and must be at least ``MIN_BYTES`` (1 MiB): ``8`` is far more
    likely a slip for ``"8GiB"`` than a bound of eight bytes, so it is refused with that
    suggestion. A string with a unit (``"100B"``) may be as small as one likes.

    Args:
        value: bytes (``int``), a fraction (``float`` in (0, 1]), or a string such as
            ``"512MB"``, ``"12GiB"``, ``"80%"`` or ``"0.8"``.
        name: the parameter's name, used in the error message.
        allow_fraction: whether fractions and percentages are accepted.
        forms: the accepted forms as the error message lists them. Defaults to
            `ACCEPTED_FORMS` (without fractions when they are refused).

    Example:
        >>> parse_size(0.5, name="memory_limit")
        Size(bytes=None, fraction=0.5)
        >>> parse_size(8, name="max_process_memory")  # ValueError: did you mean '8GiB'?
    """
    if forms is None:
        forms = ACCEPTED_FORMS if allow_fraction else ACCEPTED_FORMS.split(", a fraction")[0]
    if isinstance(value, bool) or value is None:
        raise _invalid(name, value, forms=forms)
    if isinstance(value, numbers.Integral):  # int, and NumPy's integers (np.int64)
        value = int(value)
        if value <= 0:
            raise _invalid(name, value, "must be positive", forms)
        if value < MIN_BYTES:
            raise _invalid(name, value, _unit_slip(value, allow_fraction), forms)
        return Size(bytes=value)
    if isinstance(value, numbers.Real) and not isinstance(value, str):
        value = float(value)
        if value >= MIN_BYTES and value.is_integer():
            raise _invalid(
                name, value, f"a float above 1 is not a fraction: did you mean {int(value)}?", forms
            )
        if not allow_fraction:
            raise _invalid(name, value, "fractions are not accepted here", forms)
        return _fraction(name, value, value)
    if not isinstance(value, str):
        raise _invalid(name, value, f"unsupported type {type(value).__name__}", forms)

    percent = _PERCENT_RE.match(value)
    if percent:
        if not allow_fraction:
            raise _invalid(name, value, "percentages are not accepted here", forms)
        return _fraction(name, value, float(percent.group(1)) / 100)
    match = _SIZE_RE.match(value)
    if not match:
        raise _invalid(name, value, forms=forms)
    number, unit = float(match.group(1)), match.group(2).lower()
    if not unit:
        if "." in match.group(1):
            if not allow_fraction:
                raise _invalid(name, value, "fractions are not accepted here", forms)
            return _fraction(name, value, number)
        if 0 < number < MIN_BYTES:
            raise _invalid(name, value, _unit_slip(int(number), allow_fraction), forms)
        unit = "b"
    if unit not in _UNITS:
        raise _invalid(name, value, f"unknown unit {match.group(2)!r}", forms)
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise _invalid(name, value, "must be positive", forms)
    return Size(bytes=size)


def format_bytes(size: float | None) -> str:
    """Formats bytes for people: ``format_bytes(3 * 2**30) == "3.0 GiB"``."""
    if size is None:
        return "n/a"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
