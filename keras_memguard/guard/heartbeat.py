"""The heartbeat file: the latest state of a fit, kept on disk so that it survives a kill.

A SIGKILL (the OOM killer, a scheduler) leaves no time to write anything: the event file
may hold nothing but its header. So ``MemGuardCallback(log_dir=...)`` keeps a small JSON
file, ``<run>/memguard_heartbeat.json`` beside the run's event files, rewritten (at most
about once a second, from the guard's watchdog thread) with the latest figures, the
phase, the epoch, the batch, the limit in force and the container's cgroup with its
OOM-kill count at the start. ``memguard report LOGDIR`` reads it and, for a run that
never reached train end, says what it can (cli/report.py).

Each write goes to a temporary file in the same directory, then ``os.replace`` puts it
in place: a reader (or a kill mid-write) sees the old file or the new one, never half.
``state`` is ``"running"`` while the fit runs; ``"ended"`` at train end; ``"exited"``
when the interpreter exits normally with the fit unfinished (it raised);
``"watchdog"`` when the guard's watchdog ended the process (``line`` says why). A
file still ``"running"`` whose process is gone was killed. ``heartbeat_header`` gives a
fit's fixed fields (this process, the limit and its source, the bounds, the cgroup).

Example:
    >>> beat = Heartbeat("logs/memory", {"pid": os.getpid()})
    >>> beat.write({"state": "running", "epoch": 0}, force=True)
    >>> read_heartbeat("logs/memory")["epoch"]
    0
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import threading
import time
import weakref
from typing import Any

from keras_memguard.errors import warn_once
from keras_memguard.guard.policy import Bounds, available_floor
from keras_memguard.memory_snapshot import MemorySnapshot
from keras_memguard.probes.cgroup import read_container_memory

__all__ = [
    "HEARTBEAT_FILE",
    "MIN_INTERVAL_S",
    "Heartbeat",
    "heartbeat_header",
    "limit_source",
    "read_heartbeat",
    "write_json",
]

HEARTBEAT_FILE = "memguard_heartbeat.json"
MIN_INTERVAL_S = 1.0  # a write that is not forced waits at least this long after the last
_open: weakref.WeakSet[Heartbeat] = weakref.WeakSet()


def write_json(path: str, data: dict[str, Any]) -> None:
    """Writes ``data`` as JSON to ``path`` atomically (temporary file, then rename)."""
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(temporary, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def read_heartbeat(run_dir: str) -> dict[str, Any] | None:
    """The heartbeat in ``run_dir``, or ``None`` when there is none (or it is unreadable)."""
    try:
        with open(os.path.join(run_dir, HEARTBEAT_FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Heartbeat:
    """One fit's heartbeat file in ``run_dir``; ``fixed`` fields go into every write.

    Args:
        run_dir: the run's directory (the guard's ``memory`` run).
        fixed: fields that do not change during the fit (pid, host, limit, cgroup).
    """

    def __init__(self, run_dir: str, fixed: dict[str, Any]) -> None:
        self.path = os.path.join(run_dir, HEARTBEAT_FILE)
        self.fixed = dict(fixed)
        self.state = "running"
        self._latest: dict[str, Any] = {}
        self._written_at = float("-inf")
        self._gone = False
        self._lock = threading.Lock()
        _open.add(self)

    def write(self, fields: dict[str, Any], force: bool = False) -> bool:
        """Writes ``fields`` (merged over the last ones) unless one was written < 1 s ago.

        Returns whether it wrote. A failure warns once and never raises.
        """
        with self._lock:
            self._latest.update(fields)
            self.state = self._latest.get("state", self.state)
            now = time.monotonic()
            if not force and now - self._written_at < MIN_INTERVAL_S:
                return False
            self._written_at = now
            data = {**self.fixed, **self._latest, "state": self.state, "updated": time.time()}
            if self._gone:
                return False
            try:
                write_json(self.path, data)
            except (OSError, TypeError, ValueError) as err:
                if not os.path.isdir(os.path.dirname(self.path)):
                    # The log directory was removed: like the event file, no warning and
                    # no directory recreated behind the user's back; no more heartbeats.
                    self._gone = True
                    return False
                warn_once(
                    f"heartbeat:{self.path}",
                    f"keras-memguard cannot write its heartbeat file {self.path}: {err}. "
                    "Training continues; `memguard report` will know less about a killed run.",
                )
                return False
            return True

    def close(self, state: str) -> None:
        """The final write: ``state`` says how the fit ended."""
        self.write({"state": state}, force=True)
        _open.discard(self)


def _at_exit() -> None:
    """A normal interpreter exit with a fit still running: it raised, or the script ended."""
    for beat in list(_open):
        if beat.state == "running":
            beat.close("exited")


atexit.register(_at_exit)


def heartbeat_header(snap: MemorySnapshot, bounds: Bounds, on_stuck: str) -> dict[str, Any]:
    """A fit's fixed heartbeat fields: this process, the limit and bounds, its cgroup.

    ``on_stuck`` is what the watchdog will do (``"warn"`` with several workers).

    Example:
        >>> beat = Heartbeat(run_dir, heartbeat_header(snapshot(), guard.bounds, "exit"))
    """
    container = read_container_memory()
    floor = available_floor(bounds, snap)
    bound = bounds.max_process_memory
    return {
        "version": 1,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "on_stuck": on_stuck,
        "limit": {"bytes": snap.effective_limit, "source": limit_source(snap)},
        "bound_process": bound.resolve(snap.effective_limit) if bound else None,
        "floor_available": None if floor is None else {"name": floor[0], "bytes": floor[1]},
        "cgroup": None
        if container is None
        else {
            "path": container.path,
            "version": container.version,
            "limit": container.limit,
            "oom_kills_at_start": container.oom_kills,
        },
    }


def limit_source(snap: MemorySnapshot) -> str:
    """Which limit the effective limit is: the container's or the machine's RAM."""
    if snap.container_limit is not None and snap.container_limit == snap.effective_limit:
        return "container limit"
    return "machine RAM"
