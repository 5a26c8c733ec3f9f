"""A real memory cgroup nested under this process's own, for runs that fill memory.

Never fill the shared machine without one: ``MemoryCgroup.create(limit)`` makes a child
cgroup (v1 ``memory.limit_in_bytes``, v2 ``memory.max``) under the one this process is
in, runs commands inside it, reads its working set, and removes it; where none can be
made it returns ``None`` with the reason in ``MemoryCgroup.why_not``, and tests skip.
The benchmarks use it too (``benchmarks/bench_safety.py``).

Example:
    >>> with MemoryCgroup.create(1536 * 2**20) as box:
    ...     proc = box.run([sys.executable, "script.py"], timeout=300)
    ...     box.oom_kills()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

GIB = 2**30
ROOT = "/sys/fs/cgroup"


def _own_path() -> tuple[int, str] | None:
    """(version, mount path) of this process's memory cgroup, or None."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return 1, os.path.join(ROOT, controllers, path.lstrip("/"))
    for line in lines:
        if line.startswith("0::") and os.path.exists(os.path.join(ROOT, "cgroup.controllers")):
            return 2, os.path.join(ROOT, line[3:].lstrip("/"))
    return None


class MemoryCgroup:
    """A memory cgroup with a hard limit; a context manager that removes it on exit."""

    why_not = ""

    def __init__(self, version: int, path: str, limit: int) -> None:
        self.version, self.path, self.limit = version, path, limit

    @classmethod
    def create(cls, limit: int, name: str = "memguard-test") -> MemoryCgroup | None:
        own = _own_path()
        if own is None:
            cls.why_not = "no memory cgroup found in /proc/self/cgroup"
            return None
        version, parent = own
        path = os.path.join(parent, f"{name}-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.mkdir(path)
        except OSError as err:
            cls.why_not = f"cannot create a memory cgroup under {parent}: {err}"
            return None
        box = cls(version, path, limit)
        try:
            if version == 1:
                box._write("memory.limit_in_bytes", limit)
                box._write("memory.swappiness", 0, required=False)
            else:
                box._write("memory.max", limit)
                box._write("memory.swap.max", 0, required=False)
        except OSError as err:
            box.remove()
            cls.why_not = f"cannot set a memory limit on {path}: {err}"
            return None
        return box

    def _write(self, name: str, value: int, required: bool = True) -> None:
        try:
            with open(os.path.join(self.path, name), "w") as f:
                f.write(str(value))
        except OSError:
            if required:
                raise

    def _read(self, name: str) -> str:
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def run(self, argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
        """Runs ``argv`` inside the cgroup (it joins before ``exec``); never raises on rc."""
        procs = os.path.join(self.path, "cgroup.procs")

        def join() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        return subprocess.run(
            argv, preexec_fn=join, timeout=timeout, capture_output=True, text=True, **kwargs
        )

    def working_set(self) -> int:
        """Usage less inactive file pages (what the OOM killer cannot reclaim), bytes."""
        usage = int(self._read("memory.usage_in_bytes" if self.version == 1 else "memory.current"))
        key = "total_inactive_file" if self.version == 1 else "inactive_file"
        for line in self._read("memory.stat").splitlines():
            name, value = line.split()
            if name == key:
                return usage - int(value)
        return usage

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer ended in this cgroup."""
        text = self._read("memory.oom_control" if self.version == 1 else "memory.events")
        for line in text.splitlines():
            name, value = line.split()
            if name == "oom_kill":
                return int(value)
        return 0

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        """Starts ``args`` inside this cgroup (the shell joins it, then execs ``args``)."""
        procs = os.path.join(self.path, "cgroup.procs")
        shell = 'echo $$ > "$0" && exec "$@"'
        return subprocess.Popen(["/bin/sh", "-c", shell, procs, *args], **kwargs)

    def pids(self) -> list[int]:
        """The processes in this cgroup now."""
        return [int(line) for line in self._read("cgroup.procs").split()]

    def remove(self) -> None:
        """Kills what is left in the cgroup, then removes it (retrying while it empties)."""
        for _ in range(50):  # a just-killed process may take a moment to leave
            with contextlib.suppress(OSError):
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup with a hard ``limit`` (bytes), removed afterwards; the test
    is skipped with the reason where none can be created.

    Example:
        >>> with memory_cgroup(1 * GIB) as group:
        ...     proc = group.popen([sys.executable, "fill.py"])
    """
    box = MemoryCgroup.create(limit)
    if box is None:
        pytest.skip(MemoryCgroup.why_not)
    with box:
        yield box


class PeakSampler:
    """Samples a cgroup's working set at ``hz`` in a thread; ``peak`` is the highest."""

    def __init__(self, box: MemoryCgroup, hz: float = 200.0) -> None:
        self.box, self.period, self.peak, self.samples = box, 1.0 / hz, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.box.working_set())
                self.samples += 1
            except (OSError, ValueError):
                pass
            time.sleep(self.period)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
