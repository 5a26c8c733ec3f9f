"""``MemGuardCallback``'s arguments checked at construction: a bad one fails there.

Each check raises ``ValueError`` naming the argument, echoing the value and saying the
accepted forms (``errors.invalid_argument``). ``guard_settings`` runs them all and
returns the callback's ``GuardSettings``.

Example:
    >>> check_seconds(0.1, "check_interval")
    0.1
    >>> check_seconds(-1, "check_interval")
    Traceback (most recent call last):
    ValueError: Invalid value for argument `check_interval`...
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keras_memguard.errors import invalid_argument, positive_int
from keras_memguard.guard.checkpoint import check_checkpoint_path
from keras_memguard.guard.evidence import check_evidence
from keras_memguard.guard.policy import Bounds
from keras_memguard.guard.preflight import check_preflight_mode
from keras_memguard.guard.watchdog import ON_STUCK
from keras_memguard.memory_snapshot import snapshot
from keras_memguard.probes import nvml
from keras_memguard.sizes import Size, parse_size

__all__ = [
    "ON_EXCEED",
    "GuardSettings",
    "check_choice",
    "check_gpu_fraction_has_totals",
    "check_non_negative_int",
    "check_seconds",
    "guard_settings",
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


@dataclass(frozen=True)
class GuardSettings:
    """``MemGuardCallback``'s arguments, checked and normalised (see its ``Args``).

    Each field becomes the callback's attribute of the same name. ``bounds`` gathers
    the four memory bounds; ``emergency_available_memory`` is ``None`` for ``"auto"``
    (``bounds.auto_floor``); ``evidence`` is the bundle's cap in bytes, or ``None``.
    """

    log_dir: str | None
    max_process_memory: Size | None
    min_available_memory: Size | None
    max_gpu_memory: Size | None
    emergency_available_memory: Size | None
    bounds: Bounds
    on_exceed: str
    checkpoint_path: str | None
    check_interval: float
    check_every_n_batches: int | None
    log_every_n_batches: int | None
    add_to_logs: bool | None
    leak_warmup_epochs: int
    leak_threshold: Size
    leak_patience: int
    trace_leaks: bool | None
    release_on_train_end: bool
    on_stuck: str
    verbose: int
    preflight: str | bool
    evidence: int | None


def guard_settings(arguments: Mapping[str, Any]) -> GuardSettings:
    """``MemGuardCallback``'s arguments, by name, checked (a bad one raises ``ValueError``).

    ``arguments`` holds every parameter of ``MemGuardCallback.__init__`` (its signature
    alone holds the defaults); other keys are ignored.

    Example:
        >>> settings = guard_settings(locals())  # first thing in MemGuardCallback.__init__
        >>> settings.bounds.max_process_memory
        Size(bytes=None, fraction=0.8)
    """
    a = arguments
    on_exceed = check_choice(
        a["on_exceed"], "on_exceed", ON_EXCEED, f"one of {', '.join(map(repr, ON_EXCEED))}"
    )
    check_interval = check_seconds(a["check_interval"], "check_interval")
    warmup = check_non_negative_int(a["leak_warmup_epochs"], "leak_warmup_epochs")
    on_stuck = check_choice(a["on_stuck"], "on_stuck", ON_STUCK, "'exit' or 'warn'")  # issue #24
    log_dir = os.fspath(a["log_dir"]) if a["log_dir"] is not None else None
    process = optional_size(a["max_process_memory"], "max_process_memory")
    available = optional_size(a["min_available_memory"], "min_available_memory")
    gpu = optional_size(a["max_gpu_memory"], "max_gpu_memory")
    check_gpu_fraction_has_totals(gpu)
    floor = a["emergency_available_memory"]
    auto_floor = isinstance(floor, str) and floor.strip().lower() == "auto"
    emergency = None if auto_floor else optional_size(floor, "emergency_available_memory")
    threshold = parse_size(a["leak_threshold"], name="leak_threshold", allow_fraction=False)
    checkpoint = check_checkpoint_path(a["checkpoint_path"])
    every = positive_int(a["check_every_n_batches"], "check_every_n_batches", allow_none=True)
    log_every = positive_int(a["log_every_n_batches"], "log_every_n_batches", allow_none=True)
    patience = positive_int(a["leak_patience"], "leak_patience") or 1
    trace_leaks = check_choice(
        a["trace_leaks"], "trace_leaks", (None, True, False), "None (auto), True or False"
    )
    add_to_logs = a["add_to_logs"]
    return GuardSettings(
        log_dir=log_dir,
        max_process_memory=process,
        min_available_memory=available,
        max_gpu_memory=gpu,
        emergency_available_memory=emergency,
        bounds=Bounds(process, available, gpu, emergency, auto_floor=auto_floor),
        on_exceed=on_exceed,
        checkpoint_path=checkpoint,
        check_interval=check_interval,
        check_every_n_batches=every,
        log_every_n_batches=log_every,
        add_to_logs=None if add_to_logs is None else bool(add_to_logs),
        leak_warmup_epochs=warmup,
        leak_threshold=threshold,
        leak_patience=patience,
        trace_leaks=trace_leaks,
        release_on_train_end=bool(a["release_on_train_end"]),
        on_stuck=on_stuck,
        verbose=a["verbose"],
        preflight=check_preflight_mode(a["preflight"]),  # issue #25
        evidence=check_evidence(a["evidence"]),  # issue #28
    )
