"""The child processes of ``run_isolated``: starting, talking to, ending, warm spares.

A child is ``python -c`` in a session of its own, with this process's ``sys.path``; it
talks over one end of a socket pair. The work goes out on a thread of its own and the
reply comes in on another, so the parent watches the child (its timeout, its memory,
whether it is alive) from the moment it starts, whatever the size of the payload: a
child that fails or hangs before it reads its work is seen at once.

Example:
    >>> child = start_child({}, None, ())
    >>> child.send_work(None, payload); child.wait_reply(1.0)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import psutil

__all__ = ["TERMINATE_GRACE_S", "shutdown_spares", "start_child", "take_spare"]

TERMINATE_GRACE_S = 3.0
_TREE_REFRESH_S = 1.0
_JOIN_S = 1.0
# Warm spare children, keyed by (environment, gpu_config, preload): see keep_warm.
spares: dict[tuple[Any, ...], Child] = {}
spares_lock = threading.Lock()
# Children running now, ended at exit if the driver leaves before them.
_running: set[Child] = set()
_running_lock = threading.Lock()

# The child's first lines: a failure to import keras_memguard (a broken installation,
# an environment that hides it) goes back to the parent as the child's own error.
_BOOTSTRAP = """\
import sys, json
_path = json.loads(sys.argv[3])
sys.path[:] = _path + [p for p in sys.path if p not in _path]
try:
    from keras_memguard.isolation._child import main
except BaseException as err:
    import pickle, traceback
    from multiprocessing.connection import Connection
    try:
        exc = pickle.dumps(err)
    except Exception:
        exc = None
    name = type(err).__module__ + "." + type(err).__qualname__
    Connection(int(sys.argv[1])).send(("error", exc, name, str(err), traceback.format_exc()))
    raise
main()
"""


class Child:
    """A started child: the subprocess, the parent's end of the connection, what it started."""

    def __init__(self, popen: subprocess.Popen[bytes], conn: Any) -> None:
        self.popen = popen
        self.conn = conn
        self.seen: dict[int, float] = {}  # descendants seen: pid -> create_time
        self.seen_at = float("-inf")
        self.reply: Any = None
        self.replied = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_work(self, header: bytes | None, payload: bytes) -> None:
        """Sends the work and starts listening for the reply, each on a thread: a child
        that dies or hangs before it reads stops neither the watch nor the reply."""

        def send() -> None:
            with contextlib.suppress(OSError):  # the child is gone: its reply says why
                self.conn.send_bytes(b"" if header is None else header)
                self.conn.send_bytes(payload)

        def receive() -> None:
            with contextlib.suppress(EOFError, OSError):
                self.reply = self.conn.recv()
            self.replied.set()

        for target in (send, receive):
            thread = threading.Thread(target=target, name="memguard-child-io", daemon=True)
            thread.start()
            self._threads.append(thread)

    def note_descendants(self, force: bool = False) -> None:
        """Remembers the child's descendants (they may leave its process group)."""
        now = time.monotonic()
        if not force and now - self.seen_at < _TREE_REFRESH_S:
            return
        self.seen_at = now
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self.seen[proc.pid] = proc.create_time()

    def end_tree(self, grace: float) -> tuple[int, ...]:
        """SIGTERM to the child, its process group and its descendants; SIGKILL after
        ``grace`` seconds. Returns the pids that were still running."""
        if self.alive():
            self.note_descendants(force=True)
        others: list[psutil.Process] = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    others.append(proc)
        root_alive = self.alive()
        ended = ([self.pid] if root_alive else []) + [p.pid for p in others]
        _signal_group(self.pid, signal.SIGTERM)
        if root_alive:
            with contextlib.suppress(OSError):
                self.popen.terminate()
        for proc in others:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        deadline = time.monotonic() + grace
        _, alive = psutil.wait_procs(others, timeout=grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        _signal_group(self.pid, signal.SIGKILL)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.alive():
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(TERMINATE_GRACE_S)
        return tuple(ended)

    def close(self) -> None:
        """Shuts the connection down (waking the sending and receiving threads, even if
        a process the child forked still holds its end) and closes it."""
        with contextlib.suppress(OSError, ValueError):
            dup = socket.socket(fileno=os.dup(self.conn.fileno()))
            with contextlib.suppress(OSError):
                dup.shutdown(socket.SHUT_RDWR)
            dup.close()
        for thread in self._threads:
            thread.join(_JOIN_S)
        with contextlib.suppress(OSError):
            self.conn.close()
        with _running_lock:
            _running.discard(self)


def _signal_group(pgid: int, signum: int) -> None:
    """Signals a child's process group (the child started it: ``start_new_session``)."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signum)


def _child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The child's own environment: a copy of this one with ``overrides`` applied."""
    environment = dict(os.environ)
    environment.update(overrides)
    return environment


def start_child(
    overrides: Mapping[str, str], gpu_config: dict[str, Any] | None, preload: tuple[str, ...]
) -> Child:
    """Starts ``python -c`` in a new session, with this process's ``sys.path``, and sends
    it its setup (small: it never blocks).

    Example:
        >>> start_child({"CUDA_VISIBLE_DEVICES": "1"}, {"memory_growth": True}, ("jax",))
    """
    parent_end, child_end = multiprocessing.connection.Pipe(duplex=True)
    path = [os.getcwd() if entry == "" else entry for entry in sys.path]
    fd = child_end.fileno()
    try:
        popen = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(fd), str(os.getpid()), json.dumps(path)],
            env=_child_environment(overrides),
            pass_fds=(fd,),
            start_new_session=True,
        )
    finally:
        child_end.close()
    child = Child(popen, parent_end)
    with _running_lock:
        _running.add(child)
    with contextlib.suppress(OSError):  # a child already gone: the watch sees it
        parent_end.send((gpu_config, preload))
    return child


def take_spare(key: tuple[Any, ...]) -> Child | None:
    """The warm spare started for ``key``, if it is still alive."""
    with spares_lock:
        spare = spares.pop(key, None)
    if spare is not None and not spare.alive():
        spare.close()
        return None
    return spare


def shutdown_spares() -> None:
    """Stops the warm spare children that ``keep_warm=True`` left running.

    Example:
        >>> run_isolated(trial, 1, keep_warm=True); shutdown_spares()
    """
    with spares_lock:
        waiting = list(spares.values())
        spares.clear()
    for spare in waiting:
        with contextlib.suppress(OSError):
            spare.conn.close()  # the spare sees EOF and exits
        try:
            spare.popen.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            spare.end_tree(TERMINATE_GRACE_S)
        spare.close()


def _end_all_at_exit() -> None:
    """The driver is leaving: no child of it may outlive it."""
    shutdown_spares()
    with _running_lock:
        children = list(_running)
    for child in children:
        with contextlib.suppress(OSError):
            child.conn.close()
        child.end_tree(0.5)


atexit.register(_end_all_at_exit)
