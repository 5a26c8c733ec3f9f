"""Memory of this process and of its child processes, counted the way the kernel charges it.

Keras ``PyDataset`` workers and multiprocessing data loaders are child processes: their
memory counts against the same machine, so the guard watches the tree. Forked children
share most of their pages with the parent (copy-on-write): adding every process's RSS
counts those pages once per child, and four forked workers of a 1.5 GiB parent read as
7.5 GiB while the kernel charges about 1.5 GiB. So the *tree* figure is

    this process's RSS + each descendant's **private** memory

(``Private_Clean + Private_Dirty`` from ``/proc/<pid>/smaps_rollup``): a page shared
between the parent and a child is counted once, in the parent's RSS; a page a child
wrote to (or allocated) is its own and counted too. Pages shared only among children
and no longer mapped by the parent are the one case left out.

This process's RSS comes from ``/proc/self/statm`` on every call (a few microseconds).
``smaps_rollup`` walks page tables (5 to 15 ms for a child mapping 1.5 GiB), so the
descendants' list and their private memory are refreshed every ``CHILD_REFRESH_S``
seconds **in a background thread** (the kernel's walk does not hold the GIL): a check
never waits for it, except the first one, or one after ``CHILD_STALE_S`` without any.
``children_age_s`` says how old that part of the figure is. Elsewhere than Linux the
figures come from psutil (``uss`` for children).

Example:
    >>> mem = read_process_memory()
    >>> mem.tree >= mem.rss
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

__all__ = ["CHILD_REFRESH_S", "ProcessMemory", "private_memory", "read_process_memory"]

# Seconds between (background) refreshes of the descendants' list and private memory.
CHILD_REFRESH_S = 1.0
# A figure older than this is refreshed before it is returned (the first read, a pause).
CHILD_STALE_S = 5.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HAS_PROC = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")
_HAS_ROLLUP = _HAS_PROC and os.path.exists("/proc/self/smaps_rollup")


@dataclass(frozen=True)
class ProcessMemory:
    """One process tree's memory in bytes.

    Attributes:
        rss: this process's resident set size.
        tree: ``rss`` plus the descendants' private memory (shared pages counted once).
        peak_rss: the highest RSS this process has reached (``ru_maxrss``).
        children: how many descendants were counted.
        children_private: the descendants' private memory (part of ``tree``).
        children_age_s: seconds since ``children_private`` was read.
    """

    rss: int
    tree: int
    peak_rss: int | None
    children: int
    children_private: int = 0
    children_age_s: float = 0.0

    @property
    def tree_rss(self) -> int:
        """Deprecated name of :attr:`tree` (kept for callers of 0.x)."""
        return self.tree


class _TreeCache:
    """One root pid's descendants and their private memory, refreshed every
    ``CHILD_REFRESH_S`` in a background thread (synchronously when stale or new)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = -1
        self.pids: list[int] = []
        self.private = 0
        self.read_at = float("-inf")
        self.refreshing = False

    def _measure(self, pid: int) -> tuple[list[int], int, float]:
        started = time.monotonic()
        total, counted = 0, []
        for child in psutil.Process(pid).children(recursive=True):
            try:
                total += private_memory(child.pid)
                counted.append(child.pid)
            except (OSError, psutil.Error, ValueError, IndexError):
                continue  # exited since it was listed
        return counted, total, started

    def _store(self, pid: int, figures: tuple[list[int], int, float]) -> None:
        with self.lock:
            self.pid, (self.pids, self.private, self.read_at) = pid, figures
            self.refreshing = False

    def _background(self, pid: int) -> None:
        try:
            self._store(pid, self._measure(pid))
        except (OSError, psutil.Error, ValueError, IndexError):
            with self.lock:  # the next call tries again (and reports the error)
                self.refreshing, self.read_at = False, float("-inf")

    def get(self, pid: int) -> tuple[int, int, float]:
        """Returns (children counted, their private bytes, age of the figure in s)."""
        now = time.monotonic()
        with self.lock:
            age = now - self.read_at
            fresh_needed = pid != self.pid or age >= max(CHILD_STALE_S, CHILD_REFRESH_S)
            start_thread = not fresh_needed and age >= CHILD_REFRESH_S and not self.refreshing
            if start_thread:
                self.refreshing = True
            figures = (len(self.pids), self.private, age)
        if fresh_needed:
            self._store(pid, self._measure(pid))
            with self.lock:
                return len(self.pids), self.private, time.monotonic() - self.read_at
        if start_thread:
            threading.Thread(
                target=self._background, args=(pid,), name="memguard-children", daemon=True
            ).start()
        return figures

    def forget(self) -> None:
        with self.lock:
            self.read_at = float("-inf")


_children = _TreeCache()  # this process's tree
_others: dict[int, _TreeCache] = {}  # other roots (run_isolated polls its child's tree)


def _after_fork_in_child() -> None:
    """A forked child starts with fresh caches: a new lock, no refresh in flight."""
    global _children
    _children = _TreeCache()
    _others.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cache(pid: int) -> _TreeCache:
    if pid == os.getpid():
        return _children
    if pid not in _others and len(_others) >= 16:
        _others.clear()
    return _others.setdefault(pid, _TreeCache())


def _rss_from_proc(pid: int) -> int:
    return int(read_text(f"/proc/{pid}/statm", 256).split()[1]) * _PAGE_SIZE


def _rss(pid: int) -> int:
    if _HAS_PROC:
        return _rss_from_proc(pid)
    return int(psutil.Process(pid).memory_info().rss)


def _kib_field(text: str, key: str) -> int:
    start = text.find(key)
    if start < 0:
        return 0
    end = text.find(" kB", start)
    return int(text[start + len(key) : end])


def private_memory(pid: int) -> int:
    """Bytes resident in ``pid`` and mapped by no other process (its USS).

    Example:
        >>> private_memory(os.getpid()) > 0
        True
    """
    if _HAS_ROLLUP:
        text = read_text(f"/proc/{pid}/smaps_rollup", 4096)
        return (_kib_field(text, "Private_Clean:") + _kib_field(text, "Private_Dirty:")) * 1024
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except psutil.AccessDenied:
        return _rss(pid)  # an over-count, but never an under-count


def _peak_rss() -> int | None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def read_process_memory(pid: int | None = None) -> ProcessMemory | None:
    """Reads the memory of ``pid`` (default: this process) and its descendants.

    Returns ``None``, after one warning, when the figures cannot be read.

    Example:
        >>> read_process_memory().children_private >= 0
        True
    """
    own = pid is None or pid == os.getpid()
    pid = os.getpid() if pid is None else pid
    try:
        rss = _rss(pid)
        children, private, age = _cache(pid).get(pid)
    except (OSError, psutil.Error, ValueError, IndexError) as err:
        warn_once("process-memory", f"keras-memguard cannot read process memory: {err}")
        return None
    return ProcessMemory(
        rss=rss,
        tree=rss + private,
        peak_rss=_peak_rss() if own else None,
        children=children,
        children_private=private,
        children_age_s=age,
    )
