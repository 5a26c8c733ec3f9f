"""A real memory cgroup nested under this process's own, for tests that fill memory.

``memory_cgroup(limit)`` creates ``<own cgroup>/memguard_test_<pid>_<n>`` with a hard
limit (cgroup v1 ``memory.limit_in_bytes``, swap capped too where the file exists; v2
``memory.max`` and ``memory.swap.max``), yields a :class:`MemoryCgroup` that starts
processes inside it, and at the end kills what is left in it and removes it. Where no
cgroup can be created (no memory controller, no permission, v2 without the controller
delegated), the test is skipped with the reason: never fill the shared machine without one.

Example:
    >>> with memory_cgroup(1 * GIB) as group:
    ...     proc = group.popen([sys.executable, "fill.py"])
    ...     proc.wait(); group.oom_kills()
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from test_container_memory import _own_memory_cgroup

from keras_memguard.probes.cgroup import read_oom_kills

GIB = 2**30
_names = itertools.count()


@dataclass(frozen=True)
class MemoryCgroup:
    """A memory cgroup this test created: its directory, version and limit in bytes."""

    path: str
    version: int
    limit: int

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        """Starts ``args`` inside this cgroup (the shell joins it, then execs ``args``)."""
        procs = os.path.join(self.path, "cgroup.procs")
        shell = 'echo $$ > "$0" && exec "$@"'
        return subprocess.Popen(["/bin/sh", "-c", shell, procs, *args], **kwargs)

    def oom_kills(self) -> int | None:
        """How many processes the kernel's OOM killer has killed in this cgroup."""
        return read_oom_kills(self.path, self.version)

    def pids(self) -> list[int]:
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup with a hard ``limit`` (bytes), removed afterwards."""
    parent = _own_memory_cgroup()
    if parent is None:
        pytest.skip("no memory cgroup to nest one under (/proc/self/cgroup names none)")
    version = 1 if os.path.exists(os.path.join(parent, "memory.limit_in_bytes")) else 2
    path = os.path.join(parent, f"memguard_test_{os.getpid()}_{next(_names)}")
    try:
        os.mkdir(path)
    except OSError as err:
        pytest.skip(f"cannot create a memory cgroup under {parent}: {err}")
    try:
        try:
            if version == 1:
                _write(os.path.join(path, "memory.limit_in_bytes"), str(limit))
                swap = os.path.join(path, "memory.memsw.limit_in_bytes")
                if os.path.exists(swap):
                    _write(swap, str(limit))
            else:
                _write(os.path.join(path, "memory.max"), str(limit))
                with contextlib.suppress(OSError):
                    _write(os.path.join(path, "memory.swap.max"), "0")
        except OSError as err:
            pytest.skip(f"cannot set a memory limit on {path}: {err}")
        yield MemoryCgroup(path, version, limit)
    finally:
        _remove(path)


def _remove(path: str) -> None:
    """Kills what is left in the cgroup, then removes it (retrying while it empties)."""
    for _ in range(50):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(line) for line in f if line.strip()]
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
