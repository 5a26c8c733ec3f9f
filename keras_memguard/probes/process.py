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
    """The descendants of one pid, listed again only every ``CHILD_REFRESH_S``."""

    def __init__(self) -> None:
        self.pid = -1
        self.pids: list[int] = []
        self.listed_at = float("-inf")

    def get(self, pid: int) -> list[int]:
        now = time.monotonic()
        if pid != self.pid or now - self.listed_at >= CHILD_REFRESH_S:
            self.pid, self.listed_at = pid, now
            self.pids = [child.pid for child in psutil.Process(pid).children(recursive=True)]
        return self.pids

    def forget(self) -> None:
        self.listed_at = float("-inf")


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
        _children.forget()
    return ProcessMemory(
        rss=rss, tree_rss=tree, peak_rss=_peak_rss() if own else None, children=counted
    )
