"""What a halt keeps of PyTorch's CUDA memory: the allocator's memory snapshot.

The snapshot (``torch.cuda.memory._snapshot()``, pickled) holds the caching
allocator's segments and blocks and, once recording is on, the history of allocations
and frees with their Python stacks; it opens at https://pytorch.org/memory_viz.
Recording costs every allocation, so the guard switches it on only once memory first
nears a bound (``guard/evidence.py``), with a bounded number of entries; the observer
costs nothing until an OOM. At a halt and from the allocator's out-of-memory observer
(called at a CUDA OOM before the error unwinds, as Composer's ``OOMObserver`` does) the
snapshot is written, with its HTML plots where they fit the bundle's cap. Without CUDA
(a CPU run) nothing is written.

The private calls go through ``backends/torch/compat.py``; which files to write is the
pure :func:`files_to_write`.

Example:
    >>> start_recording(max_entries=10_000)   # False without CUDA
    False
    >>> files_to_write(cuda_ready=True, recording=True, snapshot_bytes=4 * MIB, budget=64 * MIB)
    ('memory_snapshot.pickle', 'memory_trace.html', 'memory_segments.html')
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

from keras_memguard.backends.base import EvidenceFile
from keras_memguard.backends.torch import compat
from keras_memguard.backends.torch.memory import is_initialized
from keras_memguard.compat import resolve
from keras_memguard.errors import warn_once

__all__ = [
    "attach_oom_observer",
    "files_to_write",
    "is_recording",
    "start_recording",
    "stop_recording",
    "write_evidence",
]

SNAPSHOT = "memory_snapshot.pickle"
TRACE_HTML = "memory_trace.html"
SEGMENTS_HTML = "memory_segments.html"
# An HTML plot embeds the snapshot (base64 and JavaScript around it): about this many
# times its size.
HTML_FACTOR = 1.5
VIEWER = "https://pytorch.org/memory_viz"

_state: dict[str, Any] = {"recording": False, "observer": False, "on_oom": None}


def files_to_write(
    cuda_ready: bool, recording: bool, snapshot_bytes: int, budget: int
) -> tuple[str, ...]:
    """Which of the snapshot and its plots to write (pure; the CPU-testable decision).

    No CUDA: nothing. The snapshot where it fits ``budget``; then the trace plot (only
    with a recorded history: without one it is empty) and the segment plot, each where
    what is left still holds ``HTML_FACTOR`` times the snapshot.

    Example:
        >>> files_to_write(True, False, snapshot_bytes=40 * MIB, budget=64 * MIB)
        ('memory_snapshot.pickle',)
    """
    if not cuda_ready or snapshot_bytes > budget:
        return ()
    files, left = [SNAPSHOT], budget - snapshot_bytes
    for name, needs_history in ((TRACE_HTML, True), (SEGMENTS_HTML, False)):
        size = int(HTML_FACTOR * snapshot_bytes)
        if (recording or not needs_history) and size <= left:
            files.append(name)
            left -= size
    return tuple(files)


def is_recording() -> bool:
    """Whether this module switched the allocator's history on (and not off since)."""
    return bool(_state["recording"])


def start_recording(max_entries: int) -> bool:
    """Switches the allocator's history on (Python stacks, at most ``max_entries``).

    Only once torch has initialised CUDA (never initialises it); ``False`` otherwise or
    where the private call is gone (one warning).
    """
    if _state["recording"]:
        return True
    if not is_initialized():
        return False
    record = resolve(compat.RECORD_MEMORY_HISTORY)
    if record is None:
        return False
    try:
        record(enabled="all", context="all", stacks="python", max_entries=max_entries)
    except Exception as err:  # an old or changed signature: fail soft
        warn_once("evidence-torch-record", f"keras-memguard cannot record CUDA memory: {err!r}")
        return False
    _state["recording"] = True
    return True


def stop_recording() -> None:
    """Switches the history off again (its entries are dropped)."""
    if not _state["recording"]:
        return
    _state["recording"] = False
    record = resolve(compat.RECORD_MEMORY_HISTORY, warn=False)
    try:
        if record is not None:
            record(enabled=None)
    except Exception as err:
        warn_once("evidence-torch-record", f"keras-memguard cannot stop recording: {err!r}")


def _observer(device: int, alloc: int, device_alloc: int, device_free: int) -> None:
    on_oom = _state["on_oom"]
    if on_oom is not None:
        on_oom()


def attach_oom_observer(on_oom: Callable[[], None] | None) -> bool:
    """Calls ``on_oom()`` at a CUDA out-of-memory error (``None`` detaches it).

    torch cannot detach an observer, so one is attached per process, once CUDA is
    initialised, and calls whichever ``on_oom`` is set now. Returns whether one is on.
    """
    _state["on_oom"] = on_oom
    if on_oom is None or _state["observer"]:
        return bool(_state["observer"])
    if not is_initialized():
        return False
    attach = resolve(compat.ATTACH_OOM_OBSERVER)
    if attach is None:
        return False
    try:
        attach(_observer)
    except Exception as err:
        warn_once("evidence-torch-oom", f"keras-memguard cannot observe CUDA OOMs: {err!r}")
        return False
    _state["observer"] = True
    return True


def _plot(symbol: Any, snapshot: Any, path: str) -> bool:
    plot = resolve(symbol)
    if plot is None:
        return False
    with open(path, "w") as f:
        f.write(plot(snapshot))
    return True


def write_evidence(directory: str, budget: int) -> list[EvidenceFile]:
    """Writes the memory snapshot and, where they fit ``budget``, its HTML plots.

    Fails soft: one warning, and the files written so far.
    """
    if not is_initialized():
        return []
    take = resolve(compat.MEMORY_SNAPSHOT)
    if take is None:
        return []
    written: list[EvidenceFile] = []
    try:
        snapshot = take()
        data = pickle.dumps(snapshot)
        files = files_to_write(True, is_recording(), len(data), budget)
        if SNAPSHOT in files:
            with open(os.path.join(directory, SNAPSHOT), "wb") as f:
                f.write(data)
            what = "the CUDA caching allocator's segments and blocks"
            if is_recording():
                what += ", with the allocations and frees recorded since memory neared a bound"
            written.append(EvidenceFile(SNAPSHOT, what, f"drag {SNAPSHOT} onto {VIEWER}"))
        del data
        for name, symbol, what in (
            (TRACE_HTML, compat.TRACE_PLOT, "the recorded allocations over time"),
            (SEGMENTS_HTML, compat.SEGMENT_PLOT, "the allocator's segments and blocks"),
        ):
            if name in files and _plot(symbol, snapshot, os.path.join(directory, name)):
                written.append(EvidenceFile(name, what, f"open {name} in a web browser"))
    except Exception as err:  # never stop the halt
        warn_once(
            "evidence-torch",
            f"keras-memguard cannot write PyTorch's memory snapshot ({err!r}); the halt's "
            "evidence holds the summary only.",
        )
    return written
