"""Memory of this process and of its child processes.

Keras ``PyDataset`` workers and multiprocessing data loaders are child processes:
their memory counts against the same machine, so the guard watches the tree.
On Linux the figures come straight from ``/proc`` (a few microseconds); elsewhere
from psutil. The list of children is refreshed at most every ``CHILD_REFRESH_S``
seconds, because listing processes costs milliseconds.

Example:
    >>> mem = read_process_memory()
    >>> mem.tree_rss >= mem.rss
    True
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from dataclasses import dataclass

import psutil

from keras_memguard.errors import warn_once
from keras_memguard.probes.procfs import read_text

__all__ = ["CHILD_REFRESH_S", "ProcessMemory", "read_process_memory"]

CHILD_REFRESH_S = 2.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HAS_PROC = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")


@dataclass(frozen=True)
class ProcessMemory:
    """Resident memory in bytes.

    Attributes:
        rss: this process's resident set size.
        tree_rss: this process plus all its live descendants.
        peak_rss: the highest RSS this process has reached (``ru_maxrss``).
        children: how many descendants were counted.
    """

    rss: int
    tree_rss: int
    peak_rss: int | None
    children: int


class _ChildCache:
    """The descendants of each watched pid, listed again only every ``CHILD_REFRESH_S``.

    One entry per pid, behind a lock: two threads watching two processes (two
    ``run_isolated`` calls, or a guard beside a watch) never see each other's children.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[float, list[int]]] = {}
        self._lock = threading.Lock()

    def get(self, pid: int) -> list[int]:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(pid)
        if entry is not None and now - entry[0] < CHILD_REFRESH_S:
            return entry[1]
        pids = [child.pid for child in psutil.Process(pid).children(recursive=True)]
        with self._lock:
            if len(self._entries) > 64:  # pids watched long ago (ended children)
                stale = [p for p, (at, _) in self._entries.items() if now - at > 60]
                for old in stale:
                    del self._entries[old]
            self._entries[pid] = (now, pids)
        return pids

    def forget(self, pid: int | None = None) -> None:
        """Lists ``pid``'s children (every pid's, by default) again on the next read."""
        with self._lock:
            if pid is None:
                self._entries.clear()
            else:
                self._entries.pop(pid, None)


_children = _ChildCache()


def _rss_from_proc(pid: int) -> int:
    return int(read_text(f"/proc/{pid}/statm", 256).split()[1]) * _PAGE_SIZE


def _rss(pid: int) -> int:
    if _HAS_PROC:
        return _rss_from_proc(pid)
    return int(psutil.Process(pid).memory_info().rss)


def _peak_rss() -> int | None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def read_process_memory(pid: int | None = None) -> ProcessMemory | None:
    """Reads the memory of ``pid`` (default: this process) and its descendants.

    Returns ``None``, after one warning, when the figures cannot be read.
    """
    own = pid is None or pid == os.getpid()
    pid = os.getpid() if pid is None else pid
    try:
        rss = _rss(pid)
        children = _children.get(pid)
    except (OSError, psutil.Error, ValueError, IndexError) as err:
        warn_once("process-memory", f"keras-memguard cannot read process memory: {err}")
        return None
    tree = rss
    counted = 0
    gone = False
    for child in children:
        try:
            tree += _rss(child)
            counted += 1
        except (OSError, psutil.Error, ValueError, IndexError):
            gone = True  # exited since it was listed
    if gone:
        _children.forget(pid)
    return ProcessMemory(
        rss=rss, tree_rss=tree, peak_rss=_peak_rss() if own else None, children=counted
    )
