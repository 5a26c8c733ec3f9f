"""What keras-memguard raises and warns.

``MemGuardError`` is the base of every exception the package raises on purpose;
``MemGuardWarning`` the category of every warning. A failing probe (no NVML, an
unreadable cgroup file, an unwritable log directory) warns once per cause per process
through :func:`warn_once` and never raises into a training run.

Example:
    >>> try:
    ...     model.fit(x, y, callbacks=[MemGuardCallback(max_process_memory="8GiB",
    ...                                                 on_exceed="raise")])
    ... except MemoryLimitExceededError as err:
    ...     print(err.snapshot.process_tree)
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

__all__ = [
    "WATCHDOG_EXIT_CODE",
    "MemGuardError",
    "MemGuardWarning",
    "MemoryLimitExceededError",
    "invalid_argument",
    "positive_int",
    "reset_warnings",
    "warn_once",
]


# The exit status of a process that MemGuardCallback's watchdog ended because memory was
# about to run out while the training thread could not be reached (docs/callback.md).
# Outside sysexits.h's 64-78 and the shell's 126-165, so no other cause reads the same.
WATCHDOG_EXIT_CODE = 86


class MemGuardError(Exception):
    """Base class of the errors keras-memguard raises."""


class MemoryLimitExceededError(MemGuardError):
    """A memory bound was crossed with ``on_exceed="raise"``.

    Attributes:
        snapshot: the ``MemorySnapshot`` that crossed the bound.
        metric: what crossed (for example ``"process_tree"``, ``"gpu0_allocated_peak"``).
        value: its value in bytes.
        bound: the bound in bytes.
        epoch: the epoch (0-based) in which it crossed; ``None`` in ``evaluate``/``predict``.
        batch: the batch within that epoch, or ``None`` at an epoch end.
    """

    def __init__(
        self,
        message: str,
        *,
        snapshot: Any = None,
        metric: str = "",
        value: int = 0,
        bound: int = 0,
        epoch: int | None = None,
        batch: int | None = None,
    ) -> None:
        super().__init__(message)
        self.snapshot = snapshot
        self.metric = metric
        self.value = value
        self.bound = bound
        self.epoch = epoch
        self.batch = batch


def invalid_argument(name: str, value: object, expected: str, why: str = "") -> ValueError:
    """The ``ValueError`` for a bad argument: names it, echoes it, says what is accepted.

    Example:
        >>> raise invalid_argument("on_exceed", "explode", "one of 'stop', 'raise', 'warn'")
    """
    reason = f" ({why})" if why else ""
    return ValueError(
        f"Invalid value for argument `{name}`. Received: {name}={value!r}{reason}. "
        f"Expected {expected}."
    )


def positive_int(value: object, name: str, allow_none: bool = False) -> int | None:
    """Returns ``value`` if it is an int >= 1 (or ``None`` when allowed); else raises.

    Example:
        >>> positive_int(64, "batch_size")
        64
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid_argument(name, value, "a positive int" + (" or None" if allow_none else ""))
    return value


class MemGuardWarning(RuntimeWarning):
    """Category of the warnings keras-memguard emits."""


_warned: set[str] = set()
_lock = threading.Lock()


def warn_once(cause: str, message: str, stacklevel: int = 2) -> bool:
    """Warns ``message`` the first time ``cause`` is seen in this process.

    Returns whether the warning was emitted.
    """
    with _lock:
        if cause in _warned:
            return False
        _warned.add(cause)
    warnings.warn(message, MemGuardWarning, stacklevel=stacklevel + 1)
    return True


def reset_warnings() -> None:
    """Forgets which causes have warned (for tests and long-lived notebooks)."""
    with _lock:
        _warned.clear()
