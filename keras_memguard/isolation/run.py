"""``run_isolated``: run one phase of a program in a fresh process, so its memory goes away.

A loop that builds, compiles and fits models grows the process every iteration, and
TensorFlow never returns GPU memory to the device until the process exits. Running
each trial in its own process is the only flat answer.

The child is a plain ``python`` subprocess in a session of its own (not a
``multiprocessing`` child), so it may start processes itself (a ``multiprocessing.Pool``,
``PyDataset`` workers, a nested ``run_isolated``). Functions from ``__main__`` reach it,
and the processes it starts, as with ``multiprocessing``'s spawn: a guarded script runs
again there as ``__mp_main__``; an unguarded script's or a notebook's functions travel by
value (see ``_transfer``). The work is sent on a thread while the parent watches (see
``_process``).

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

import contextlib
import os
import pickle
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keras_memguard.backends.base import BACKENDS, backend_name
from keras_memguard.errors import WATCHDOG_EXIT_CODE, MemGuardError, invalid_argument
from keras_memguard.isolation import _transfer
from keras_memguard.isolation._process import (
    TERMINATE_GRACE_S,
    shutdown_spares,
    spares,
    spares_lock,
    start_child,
    take_spare,
)
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

_MEMORY_GRACE_S = 0.5  # a child over its bound may still be growing: end it quickly
_REPLY_GRACE_S = 1.0  # a child that has exited: the rest of its reply is in the socket
_spares = spares  # the warm spares, by (environment, gpu_config, preload): see keep_warm
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

    @property
    def ended_by_watchdog(self) -> bool:
        """The guard's watchdog ended it: memory was about to run out (issue #24)."""
        return self.exitcode == WATCHDOG_EXIT_CODE

    def describe(self) -> str:
        if self.memory_exceeded:
            how = "stopped by run_isolated for exceeding max_memory"
        elif self.timed_out:
            how = "stopped by run_isolated at its timeout"
        elif self.oom_killed:
            how = "killed by the kernel's OOM killer (the container's OOM-kill count rose)"
        elif self.ended_by_watchdog:
            how = (
                f"ended by keras-memguard's watchdog (exit code {WATCHDOG_EXIT_CODE}): memory "
                "was about to run out while training waited"
            )
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


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds (a positive number) or ``None``; anything else is refused.

    Example:
        >>> check_timeout(600)
        600.0
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise invalid_argument("timeout", timeout, "seconds as a positive number, or None")
    return float(timeout)


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
        fn: the phase. A module-level function travels by reference, also one of a
            guarded script's `__main__` (the child runs the script as `__mp_main__`,
            as spawn does); one of an unguarded script or a notebook, a lambda or a
            nested function travels by value (cloudpickle). Either way the pools and
            workers the phase starts find the functions of `__main__`.
        timeout: seconds from this call (the child's start-up and the transfer of the
            arguments included) before the child and its whole process tree are
            stopped. Defaults to `None` (no limit).
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
            that builds the dataset in the child; a function of an unguarded `__main__`
            where cloudpickle is missing).
        RuntimeError: called at the module level of a script, outside its guard, while
            the script runs again as `__mp_main__` in a child.
        Exception: the exception `fn` raised, re-raised with the child's traceback as
            its `__cause__`; `ChildFailedError` when it cannot be sent back as itself.
        ChildSystemExit: the phase called `sys.exit(code)` with a code other than 0.
        ChildTimeoutError, ChildMemoryLimitError, ChildKilledError: how the child ended
            otherwise; each carries `.exit` (a :class:`ChildExit`).

    Example:
        >>> run_isolated(pow, 2, 10)
        1024
    """
    start = time.monotonic()  # the timeout counts from here: start-up and transfer too
    _transfer.refuse_while_preparing()
    check_timeout(timeout)
    if not isinstance(poll_interval, (int, float)) or not poll_interval > 0:
        raise invalid_argument("poll_interval", poll_interval, "seconds as a positive number")
    bound_size = None if max_memory is None else parse_size(max_memory, name="max_memory")
    bound = None if bound_size is None else bound_size.resolve(snapshot(gpus=False).effective_limit)
    overrides = {str(k): str(v) for k, v in (env or {}).items()}
    header, payload = _transfer.pack(fn, args, kwargs)

    config = dict(gpu_config) if gpu_config is not None else None
    preload = default_preload() if preload is None else tuple(preload)
    key = (tuple(sorted(overrides.items())), repr(sorted((config or {}).items())), preload)
    kills_before = _oom_kills()
    child = take_spare(key) if keep_warm else None
    if child is None:
        child = start_child(overrides, config, ())
    child.send_work(header, payload)

    peak: int | None = None
    timed_out = memory_exceeded = False
    ended: tuple[int, ...] = ()
    try:
        if keep_warm:
            with spares_lock:
                if key not in spares:
                    spares[key] = start_child(overrides, config, preload)
        while not child.replied.wait(poll_interval):
            if not child.alive():  # what it sent before it ended is in the socket
                child.replied.wait(_REPLY_GRACE_S)
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
        message = child.reply if child.replied.is_set() else None
        if message is not None and child.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(TERMINATE_GRACE_S)
        ended = child.end_tree(_MEMORY_GRACE_S if memory_exceeded else TERMINATE_GRACE_S)
        child.close()
        if header is not None:
            with contextlib.suppress(OSError):
                os.remove(_transfer.namespace_file(child.pid))

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
