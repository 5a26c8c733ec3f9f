"""``run_isolated``: run one phase of a program in a fresh process, so its memory goes away.

A loop that builds, compiles and fits models grows the process every iteration, and
TensorFlow never returns GPU memory to the device until the process exits. Running
each trial in its own process is the only flat answer.

The child is a plain ``python`` subprocess in a session of its own (not a
``multiprocessing`` child): it never runs the driver's ``__main__`` again, so a script
without an ``if __name__ == "__main__":`` guard and a notebook both work, and it may start
processes itself (a ``multiprocessing.Pool``, ``PyDataset`` workers, a nested
``run_isolated``). Functions defined in ``__main__`` travel by value (cloudpickle).

The parent watches the child: a timeout, and a bound on the child's memory (its whole
process tree, sampled every ``poll_interval`` seconds) that is enforced from outside, so a
child that is stuck in a C++ op or swapping is still stopped. Whenever the parent stops a
child (timeout, bound, an error or Ctrl-C in the driver), it ends the child's whole tree:
SIGTERM to the process group and every descendant, SIGKILL after a grace period.

Example:
    >>> def trial(units):
    ...     model = build(units); return model.fit(...).history["loss"][-1]
    >>> loss = run_isolated(trial, 64, timeout=600, max_memory="8GiB",
    ...                     gpu_config={"memory_growth": True})
"""

from __future__ import annotations

import atexit
import contextlib
import json
import multiprocessing.connection
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from keras_memguard.backends.base import BACKENDS, backend_name, cannot_travel
from keras_memguard.errors import MemGuardError, invalid_argument
from keras_memguard.memory_snapshot import snapshot
from keras_memguard.probes.cgroup import CgroupReader
from keras_memguard.probes.process import read_process_memory
from keras_memguard.sizes import format_bytes, parse_size

__all__ = [
    "ChildExit",
    "ChildFailedError",
    "ChildKilledError",
    "ChildMemoryLimitError",
    "ChildSystemExit",
    "ChildTimeoutError",
    "IsolatedError",
    "run_isolated",
    "shutdown_spares",
]

_TERMINATE_GRACE_S = 3.0
_MEMORY_GRACE_S = 0.5  # a child over its bound may still be growing: end it quickly
_TREE_REFRESH_S = 1.0
# Warm spare children, keyed by (environment, gpu_config, preload): see keep_warm.
_spares: dict[tuple[Any, ...], _Child] = {}
_spares_lock = threading.Lock()
# Children running now, ended at exit if the driver leaves before them.
_running: set[_Child] = set()
_running_lock = threading.Lock()
# The configure_gpus report of this process when it is a run_isolated child.
child_gpu_report: Any = None


@dataclass(frozen=True)
class ChildExit:
    """How a child process ended.

    Attributes:
        exitcode: the exit status (negative: killed by that signal), ``None`` if unknown.
        signal: the signal's name when it was killed by one (``"SIGKILL"``).
        oom_killed: killed by SIGKILL while the container's OOM-kill count rose.
        timed_out: the parent stopped it at ``timeout``.
        memory_exceeded: the parent stopped it at ``max_memory``.
        peak_rss: the highest process-tree RSS the parent sampled, in bytes.
        duration_s: wall time from start to end.
        ended_pids: the processes run_isolated ended: the child and what it had started
            (left running after a result, or stopped with it). Empty when none.
    """

    exitcode: int | None
    signal: str | None
    oom_killed: bool
    timed_out: bool
    memory_exceeded: bool
    peak_rss: int | None
    duration_s: float
    ended_pids: tuple[int, ...] = field(default=())

    def describe(self) -> str:
        if self.memory_exceeded:
            how = "stopped by run_isolated for exceeding max_memory"
        elif self.timed_out:
            how = "stopped by run_isolated at its timeout"
        elif self.oom_killed:
            how = "killed by the kernel's OOM killer (the container's OOM-kill count rose)"
        elif self.signal == "SIGKILL":
            how = "killed by SIGKILL (often the OOM killer, or a job scheduler)"
        elif self.signal:
            how = f"killed by signal {self.signal}"
        else:
            how = f"exited with code {self.exitcode}"
        ended = ""
        if self.ended_pids:
            ended = f"; ended {len(self.ended_pids)} process(es) of its tree"
        return (
            f"{how}; peak memory {format_bytes(self.peak_rss)}, ran {self.duration_s:.1f} s{ended}"
        )


class IsolatedError(MemGuardError):
    """The child did not return a result. ``exit`` says how it ended."""

    def __init__(self, message: str, exit: ChildExit | None = None) -> None:
        super().__init__(message)
        self.exit = exit


class ChildFailedError(IsolatedError):
    """The child raised an exception that could not be sent back as itself.

    Attributes:
        type_name: the exception's qualified type name in the child.
        child_traceback: the child's formatted traceback.
    """

    def __init__(
        self, message: str, exit: ChildExit | None, type_name: str, child_traceback: str
    ) -> None:
        super().__init__(message, exit)
        self.type_name = type_name
        self.child_traceback = child_traceback


class ChildKilledError(IsolatedError):
    """The child died (a signal, the OOM killer, ``os._exit``) before returning."""


class ChildSystemExit(ChildKilledError):
    """The phase raised ``SystemExit(code)`` with a code other than 0 or ``None``.

    Attributes:
        code: the ``SystemExit`` code (an int, or the message a string code carried).
    """

    def __init__(self, message: str, exit: ChildExit | None, code: int | str) -> None:
        super().__init__(message, exit)
        self.code = code


class ChildTimeoutError(IsolatedError, TimeoutError):
    """The child ran past ``timeout`` and was stopped."""


class ChildMemoryLimitError(IsolatedError):
    """The child's memory crossed ``max_memory`` and it was stopped."""


class RemoteTraceback(Exception):
    """Carries the child's traceback as the ``__cause__`` of a re-raised exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\nTraceback in the run_isolated child process:\n{self.text}"


class _Child:
    """A started child: the subprocess, the parent's end of the connection, what it started."""

    def __init__(self, popen: subprocess.Popen[bytes], conn: Any) -> None:
        self.popen = popen
        self.conn = conn
        self.seen: dict[int, float] = {}  # descendants seen: pid -> create_time
        self.seen_at = float("-inf")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

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
            self.popen.wait(_TERMINATE_GRACE_S)
        return tuple(ended)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def _signal_group(pgid: int, signum: int) -> None:
    """Signals a child's process group (the child started it: ``start_new_session``)."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signum)


def _dumps(value: Any) -> bytes:
    """Pickles with cloudpickle where installed: functions from ``__main__`` (a script,
    a notebook) travel by value; everything importable still travels by reference."""
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _cannot_travel(value: Any) -> str | None:
    """Why a value cannot be sent to another process, for the inputs people pass."""
    why = cannot_travel(value)
    if why:
        return why
    if isinstance(value, (types.GeneratorType, types.AsyncGeneratorType)):
        return "an open generator cannot be sent to another process"
    return None


def _check_inputs(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    named = [(f"args[{i}]", v) for i, v in enumerate(args)] + list(kwargs.items())
    for name, value in named:
        inner = list(value.values()) if isinstance(value, dict) else value
        values = list(inner) if isinstance(inner, (list, tuple)) else [value]
        for item in [value, *values]:
            why = _cannot_travel(item)
            if why:
                raise invalid_argument(
                    name,
                    item,
                    "NumPy arrays, or a function (or file path) that builds the dataset "
                    "inside the child",
                    why=why,
                )


def _payload(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    if not callable(fn):
        raise invalid_argument("fn", fn, "a function defined at module level")
    _check_inputs(args, kwargs)
    try:
        return _dumps((fn, args, kwargs))
    except Exception as err:
        raise invalid_argument(
            "fn",
            fn,
            "a function the child process can import or rebuild: define it at module level "
            "(or install cloudpickle, which sends lambdas, nested functions and functions "
            f"from __main__ by value), with picklable arguments; pickling failed with "
            f"{type(err).__name__}: {err}",
        ) from None


def _child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The child's own environment: a copy of this one with ``overrides`` applied."""
    environment = dict(os.environ)
    environment.update(overrides)
    return environment


def _start_child(
    payload: bytes | None,
    overrides: dict[str, str],
    gpu_config: dict[str, Any] | None,
    preload: tuple[str, ...],
) -> _Child:
    """Starts ``python -c`` in a new session, with this process's ``sys.path``."""
    parent_end, child_end = multiprocessing.connection.Pipe(duplex=True)
    path = [os.getcwd() if entry == "" else entry for entry in sys.path]
    code = (
        "import sys, json; sys.path[:] = json.loads(sys.argv[3]) + "
        "[p for p in sys.path if p not in json.loads(sys.argv[3])]; "
        "from keras_memguard.isolation._child import main; main()"
    )
    fd = child_end.fileno()
    try:
        popen = subprocess.Popen(
            [sys.executable, "-c", code, str(fd), str(os.getpid()), json.dumps(path)],
            env=_child_environment(overrides),
            pass_fds=(fd,),
            start_new_session=True,
        )
    finally:
        child_end.close()
    child = _Child(popen, parent_end)
    with _running_lock:
        _running.add(child)
    parent_end.send((gpu_config, preload))
    if payload is not None:
        parent_end.send_bytes(payload)
    return child


def _forget(child: _Child) -> None:
    with _running_lock:
        _running.discard(child)


def _take_spare(key: tuple[Any, ...]) -> _Child | None:
    with _spares_lock:
        spare = _spares.pop(key, None)
    if spare is not None and not spare.alive():
        spare.close()
        _forget(spare)
        return None
    return spare


def shutdown_spares() -> None:
    """Stops the warm spare children that ``keep_warm=True`` left running.

    Example:
        >>> run_isolated(trial, 1, keep_warm=True); shutdown_spares()
    """
    with _spares_lock:
        spares = list(_spares.values())
        _spares.clear()
    for spare in spares:
        spare.close()  # the spare sees EOF and exits
        try:
            spare.popen.wait(_TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            spare.end_tree(_TERMINATE_GRACE_S)
        _forget(spare)


def _end_all_at_exit() -> None:
    """The driver is leaving: no child of it may outlive it."""
    shutdown_spares()
    with _running_lock:
        children = list(_running)
    for child in children:
        child.close()
        child.end_tree(_MEMORY_GRACE_S)


atexit.register(_end_all_at_exit)


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _oom_kills() -> int | None:
    """The container's OOM-kill count, read now (a fresh reader: no cached figure)."""
    container = CgroupReader().read()
    return container.oom_kills if container else None


def default_preload() -> tuple[str, ...]:
    """The framework of the Keras backend in use, for a warm spare to import early.

    Example:
        >>> default_preload()            # with KERAS_BACKEND=jax
        ('jax',)
    """
    name = backend_name()
    return (name,) if name in BACKENDS else ()  # each framework's package has its name


def run_isolated(
    fn: Callable[..., Any],
    *args: Any,
    timeout: float | None = None,
    max_memory: int | float | str | None = None,
    env: Mapping[str, str] | None = None,
    gpu_config: Mapping[str, Any] | None = None,
    poll_interval: float = 0.1,
    keep_warm: bool = False,
    preload: tuple[str, ...] | None = None,
    **kwargs: Any,
) -> Any:
    """Runs ``fn(*args, **kwargs)`` in a fresh process and returns its result.

    The keyword arguments below are run_isolated's own; every other one goes to `fn`.

    Args:
        fn: the phase. A module-level function travels by reference; a function from
            `__main__` (a script without a `__main__` guard, a notebook), a lambda or a
            nested function travels by value when cloudpickle is installed.
        timeout: seconds before the child (and its whole process tree) is stopped.
            Defaults to `None` (no limit).
        max_memory: bound on the child's process-tree RSS, watched from the parent:
            bytes, `"8GiB"`, or a fraction of the effective limit. Defaults to `None`.
        env: environment variables for the child only (`{"CUDA_VISIBLE_DEVICES": "1"}`);
            this process's `os.environ` is not touched. Defaults to `None`.
        gpu_config: keyword arguments for `configure_gpus`, applied in the child before
            `fn` is unpickled. Defaults to `None`.
        poll_interval: seconds between the parent's checks. Defaults to `0.1`.
        keep_warm: after starting this child, start a spare one (same `env`,
            `gpu_config` and `preload`) that imports `preload` and waits; the next call
            with the same settings uses it and skips the start-up. The spare holds
            memory while it waits; `shutdown_spares()` stops it (it also stops at exit).
            Defaults to `False`.
        preload: modules a spare imports ahead of its work. Defaults to `None`: the
            framework of the Keras backend in use (`tensorflow`, `jax` or `torch`).

    Returns:
        What `fn` returned (it must be picklable). A phase that raises `SystemExit(0)`
        or `SystemExit(None)` (`sys.exit()`, argparse's `--help`) returns `None`.

    Raises:
        ValueError: `fn` or its arguments cannot be sent to a child (named, with the fix:
            a `tf.data.Dataset` or a generator cannot travel; pass arrays, or a function
            that builds the dataset in the child).
        Exception: the exception `fn` raised, re-raised with the child's traceback as
            its `__cause__`; `ChildFailedError` when it cannot be sent back as itself.
        ChildSystemExit: the phase called `sys.exit(code)` with a code other than 0.
        ChildTimeoutError, ChildMemoryLimitError, ChildKilledError: how the child ended
            otherwise; each carries `.exit` (a :class:`ChildExit`).

    Example:
        >>> run_isolated(pow, 2, 10)
        1024
    """
    if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
        raise invalid_argument("timeout", timeout, "seconds as a positive number, or None")
    if not isinstance(poll_interval, (int, float)) or not poll_interval > 0:
        raise invalid_argument("poll_interval", poll_interval, "seconds as a positive number")
    bound_size = None if max_memory is None else parse_size(max_memory, name="max_memory")
    bound = None if bound_size is None else bound_size.resolve(snapshot(gpus=False).effective_limit)
    overrides = {str(k): str(v) for k, v in (env or {}).items()}
    payload = _payload(fn, args, kwargs)

    config = dict(gpu_config) if gpu_config is not None else None
    preload = default_preload() if preload is None else tuple(preload)
    key = (tuple(sorted(overrides.items())), repr(sorted((config or {}).items())), preload)
    kills_before = _oom_kills()
    start = time.monotonic()
    child = _take_spare(key) if keep_warm else None
    if child is not None:
        child.conn.send_bytes(payload)
    else:
        child = _start_child(payload, overrides, config, ())
    if keep_warm:
        with _spares_lock:
            if key not in _spares:
                _spares[key] = _start_child(None, overrides, config, preload)

    peak: int | None = None
    message: Any = None
    timed_out = memory_exceeded = False
    ended: tuple[int, ...] = ()
    try:
        while True:
            if child.conn.poll(poll_interval):
                try:
                    message = child.conn.recv()
                except EOFError:
                    message = None
                break
            if not child.alive():
                if child.conn.poll(0):
                    with contextlib.suppress(EOFError):
                        message = child.conn.recv()
                break
            child.note_descendants()
            mem = read_process_memory(child.pid)
            if mem is not None:
                peak = max(peak or 0, mem.tree_rss)
                if bound is not None and mem.tree_rss > bound:
                    memory_exceeded = True
                    break
            if timeout is not None and time.monotonic() - start > timeout:
                timed_out = True
                break
    finally:
        # A result: the child exits by itself; anything else (a bound, a timeout, an
        # error or KeyboardInterrupt here): its whole tree is ended now.
        if message is not None and child.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(_TERMINATE_GRACE_S)
        ended = child.end_tree(_MEMORY_GRACE_S if memory_exceeded else _TERMINATE_GRACE_S)
        child.close()
        _forget(child)

    exitcode = child.popen.returncode
    signal_name = _signal_name(exitcode)
    kills_after = _oom_kills() if signal_name == "SIGKILL" else None
    exit_info = ChildExit(
        exitcode=exitcode,
        signal=signal_name,
        oom_killed=(
            kills_before is not None
            and kills_after is not None
            and kills_after > kills_before
            and not (timed_out or memory_exceeded)
        ),
        timed_out=timed_out,
        memory_exceeded=memory_exceeded,
        peak_rss=peak,
        duration_s=time.monotonic() - start,
        ended_pids=ended,
    )
    return _verdict(fn, message, exit_info, timeout, bound)


def _verdict(
    fn: Callable[..., Any],
    message: Any,
    exit_info: ChildExit,
    timeout: float | None,
    bound: int | None,
) -> Any:
    """The result, or the error that says how the child ended."""
    name = getattr(fn, "__qualname__", repr(fn))
    if exit_info.timed_out:
        raise ChildTimeoutError(
            f"run_isolated: {name} ran past timeout={timeout} s and was "
            f"stopped ({exit_info.describe()}).",
            exit_info,
        )
    if exit_info.memory_exceeded:
        raise ChildMemoryLimitError(
            f"run_isolated: {name} used {format_bytes(exit_info.peak_rss)}, more than "
            f"max_memory={format_bytes(bound)}, and was stopped ({exit_info.describe()}).",
            exit_info,
        )
    if message is None:
        raise ChildKilledError(
            f"run_isolated: {name} ended without a result: {exit_info.describe()}.", exit_info
        )
    kind = message[0]
    if kind == "ok":
        return pickle.loads(message[1])
    if kind == "exit":
        code = message[1]
        if code is None or code == 0:
            return None
        raise ChildSystemExit(
            f"run_isolated: {name} called sys.exit({code!r}) ({exit_info.describe()}).",
            exit_info,
            code,
        )
    if kind == "unimportable":
        raise invalid_argument(
            "fn",
            fn,
            "a function the child process can import: define it at module level of a module "
            f"on the child's sys.path; importing it in the child failed with {message[1]}",
        )
    _, exc_bytes, type_name, text, child_tb = message
    if exc_bytes is not None:
        try:
            exc = pickle.loads(exc_bytes)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            raise exc from RemoteTraceback(child_tb)
    raise ChildFailedError(
        f"run_isolated: {name} raised {type_name}: {text}", exit_info, type_name, child_tb
    )
