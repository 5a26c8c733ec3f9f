"""What a halt keeps of JAX's device memory: its device memory profile (pprof).

``jax.profiler.save_device_memory_profile`` writes every live buffer on every device,
by the Python stack that allocated it, as a gzip-compressed pprof profile (it works on
CPU too; ``pprof`` opens it). The compiled step's own memory analysis, which pprof
misses (it sees buffers, not XLA's temporaries), is the pre-flight's
``step temporaries`` part (``preflight="full"``), which the bundle keeps beside it.
Each device's allocator statistics (``Device.memory_stats()``, ``null`` on CPU) go to a
JSON file. JAX has no allocation history to record, so recording is a no-op here.

Example:
    >>> write_evidence("logs/memory_evidence", budget=64 * 2**20)
    [EvidenceFile(name='device_memory.prof', ...), EvidenceFile(name='device_memory.json', ...)]
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from keras_memguard.backends.base import EvidenceFile
from keras_memguard.backends.jax.memory import is_initialized
from keras_memguard.errors import warn_once

__all__ = ["attach_oom_observer", "start_recording", "stop_recording", "write_evidence"]

PROFILE = "device_memory.prof"
STATS = "device_memory.json"


def start_recording(max_entries: int) -> bool:
    """JAX records no allocation history: nothing to switch on (``False``)."""
    return False


def stop_recording() -> None:
    """Nothing was switched on."""


def attach_oom_observer(on_oom: Callable[[], None] | None) -> bool:
    """JAX's allocator has no out-of-memory observer (``False``)."""
    return False


def _device_stats(jax: Any) -> list[dict[str, Any]]:
    rows = []
    for device in jax.local_devices():
        try:
            stats = device.memory_stats()
        except Exception:  # a platform without statistics
            stats = None
        rows.append({"device": str(device), "platform": device.platform, "memory_stats": stats})
    return rows


def write_evidence(directory: str, budget: int) -> list[EvidenceFile]:
    """Writes the device memory profile and each device's statistics into ``directory``.

    ``budget`` (bytes left under the bundle's cap) is checked by the caller once the
    files exist: a profile holds one entry per live buffer, small next to the cap.
    Fails soft: one warning, and the files written so far.
    """
    jax = sys.modules.get("jax")
    if jax is None or not is_initialized():
        return []
    written = []
    try:
        jax.profiler.save_device_memory_profile(os.path.join(directory, PROFILE))
        written.append(
            EvidenceFile(
                PROFILE,
                "JAX's live device buffers by the Python stack that allocated them (gzip pprof)",
                f"pprof -http=localhost:8080 {PROFILE}  (or: go tool pprof -top {PROFILE})",
            )
        )
        with open(os.path.join(directory, STATS), "w") as f:
            json.dump({"devices": _device_stats(jax)}, f, indent=2, default=str)
        written.append(
            EvidenceFile(
                STATS,
                "each device's allocator statistics (Device.memory_stats(); null on CPU)",
                f"python -m json.tool {STATS}",
            )
        )
    except Exception as err:  # a profile must never stop the halt
        warn_once(
            "evidence-jax",
            f"keras-memguard cannot write JAX's device memory profile ({err!r}); the halt's "
            "evidence holds the summary only.",
        )
    return written
