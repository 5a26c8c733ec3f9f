"""Memory of the whole machine: total, available, used percent and swap.

On Linux it parses ``/proc/meminfo`` once per call (``MemAvailable`` is the kernel's
own estimate of what can be allocated without swapping); elsewhere it asks psutil.

Example:
    >>> mem = read_system_memory()
    >>> 0 < mem.available <= mem.total
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

from keras_memguard.errors import warn_once
from keras_memguard.probes.procfs import read_text

__all__ = ["SystemMemory", "parse_meminfo", "read_system_memory"]

_MEMINFO = "/proc/meminfo"
_HAS_MEMINFO = os.path.exists(_MEMINFO)


@dataclass(frozen=True)
class SystemMemory:
    """Machine memory in bytes (``used_percent`` in percent)."""

    total: int
    available: int
    used_percent: float
    swap_total: int
    swap_used: int


def parse_meminfo(text: str) -> SystemMemory:
    """Parses the text of ``/proc/meminfo``."""
    total = _field(text, "MemTotal:")
    if total is None:
        raise ValueError("/proc/meminfo has no MemTotal line")
    available = _field(text, "MemAvailable:")
    if available is None:  # kernels before 3.14
        available = _field(text, "MemFree:") or 0
    swap_total = _field(text, "SwapTotal:") or 0
    swap_free = _field(text, "SwapFree:")
    return SystemMemory(
        total=total,
        available=available,
        used_percent=round(100.0 * (total - available) / total, 2) if total else 0.0,
        swap_total=swap_total,
        swap_used=swap_total - (swap_total if swap_free is None else swap_free),
    )


def _field(text: str, key: str) -> int | None:
    start = text.find(key)
    if start < 0:
        return None
    end = text.find(" kB", start)
    return int(text[start + len(key) : end]) * 1024


def read_system_memory() -> SystemMemory | None:
    """Reads the machine's memory; ``None``, after one warning, if it cannot."""
    try:
        if _HAS_MEMINFO:
            return parse_meminfo(read_text(_MEMINFO))
        vm, swap = psutil.virtual_memory(), psutil.swap_memory()
        return SystemMemory(
            total=int(vm.total),
            available=int(vm.available),
            used_percent=float(vm.percent),
            swap_total=int(swap.total),
            swap_used=int(swap.used),
        )
    except (OSError, psutil.Error, ValueError, KeyError, IndexError) as err:
        warn_once("system-memory", f"keras-memguard cannot read system memory: {err}")
        return None
