"""``run_isolated``: run one phase of a program in a fresh process, so its memory goes away.

A loop that builds, compiles and fits models grows the process every iteration, and
TensorFlow never returns GPU memory to the device until the process exits. Running
each trial in its own process is the only flat answer. The child is *spawned* (a fresh
interpreter), never forked from a process that has TensorFlow loaded.

The parent watches the child: a timeout, and a bound on the child's memory (its whole
process tree, sampled every ``poll_interval`` seconds) that is enforced from outside,
so a child that is stuck in a C++ op or swapping is still stopped.

Example:
    >>> def trial(units):                # at module level, so the child can import it
    ...     model = build(units); return model.fit(...).history["loss"][-1]
    >>> loss = run_isolated(trial, 64, timeout=600, max_memory="8GiB",
    ...                     gpu_config={"memory_growth": True})
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from keras_memguard.errors import MemGuardError, invalid_argument
from keras_memguard.probes.cgroup import read_container_memory
from keras_memguard.probes.process import read_process_memory
from keras_memguard.probes.snapshot import snapshot
from keras_memguard.sizes import format_bytes, parse_size

__all__ = [
    "ChildExit",
    "ChildFailedError",
    "ChildKilledError",
    "ChildMemoryLimitError",
    "ChildTimeoutError",
    "IsolatedError",
    "run_isolated",
    "shutdown_spares",
]

_TERMINATE_GRACE_S = 5.0
_environ_lock = threading.Lock()
# Warm spare children, keyed by (environment, gpu_config, preload): see keep_warm.
_spares: dict[tuple[Any, ...], tuple[Any, Any]] = {}
_spares_lock = threading.Lock()
# The configure_gpus report of this process when it is a run_isolated child.
child_gpu_report: Any = None


@dataclass(frozen=True)
class ChildExit:
    """How a child process ended.

    Attributes:
        exitcode: the exit status (negative: killed by that signal), ``None`` if unknown.
        signal: the signal's name when it was killed by one (``"SIGKILL"``).
        oom_killed: the container's OOM-kill count rose while the child ran.
        timed_out: the parent stopped it at ``timeout``.
        memory_exceeded: the parent stopped it at ``max_memory``.
        peak_rss: the highest process-tree RSS the parent sampled, in bytes.
        duration_s: wall time from start to end.
    """

    exitcode: int | None
    signal: str | None
    oom_killed: bool
    timed_out: bool
    memory_exceeded: bool
    peak_rss: int | None
    duration_s: float

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
        return f"{how}; peak memory {format_bytes(self.peak_rss)}, ran {self.duration_s:.1f} s"


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


def _child_main(
    conn: Any,
    payload: bytes | None,
    env: dict[str, str],
    gpu_config: dict[str, Any] | None,
    preload: tuple[str, ...] = (),
) -> None:
    """The child's entry point: configure, preload, (wait for the work,) run, send back."""
    global child_gpu_report
    os.environ.update(env)
    try:
        if gpu_config is not None:
            from keras_memguard.backends.configure import configure_gpus

            child_gpu_report = configure_gpus(**gpu_config)
        for module in preload:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        if payload is None:  # a warm spare: the work arrives when a call needs it
            try:
                payload = conn.recv()
            except EOFError:
                return
        try:
            fn, args, kwargs = pickle.loads(payload)
        except Exception as err:
            conn.send(("unimportable", f"{type(err).__name__}: {err}", traceback.format_exc()))
            return
        result = fn(*args, **kwargs)
    except BaseException as err:  # everything goes back to the parent
        text = traceback.format_exc()
        name = f"{type(err).__module__}.{type(err).__qualname__}"
        try:
            exc_bytes: bytes | None = pickle.dumps(err)
        except Exception:
            exc_bytes = None
        conn.send(("error", exc_bytes, name, str(err), text))
        return
    try:
        conn.send(("ok", pickle.dumps(result)))
    except Exception as err:
        conn.send(
            (
                "error",
                None,
                type(err).__name__,
                f"the result of {getattr(fn, '__qualname__', fn)!r} cannot be pickled: {err}",
                traceback.format_exc(),
            )
        )


@contextlib.contextmanager
def _environment(overrides: Mapping[str, str]) -> Iterator[None]:
    """Sets variables for a child's start (spawn copies ``os.environ`` then)."""
    with _environ_lock:
        saved = {name: os.environ.get(name) for name in overrides}
        os.environ.update(overrides)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _payload(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    if not callable(fn):
        raise invalid_argument("fn", fn, "a function defined at module level")
    try:
        return pickle.dumps((fn, args, kwargs))
    except Exception as err:
        raise invalid_argument(
            "fn",
            fn,
            "a function the child process can import: define it at module level (not a "
            "lambda, a nested function or a method of a local class), with picklable "
            f"arguments; pickling failed with {type(err).__name__}: {err}",
        ) from None


def _start_child(
    payload: bytes | None,
    overrides: dict[str, str],
    gpu_config: dict[str, Any] | None,
    preload: tuple[str, ...],
    name: str,
) -> tuple[Any, Any]:
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=True)
    process = context.Process(
        target=_child_main,
        args=(child_end, payload, overrides, gpu_config, preload),
        name=name,
        daemon=True,
    )
    with _environment(overrides):
        process.start()
    child_end.close()
    return process, parent_end


def _take_spare(key: tuple[Any, ...]) -> tuple[Any, Any] | None:
    with _spares_lock:
        spare = _spares.pop(key, None)
    if spare is not None and not spare[0].is_alive():
        spare[1].close()
        return None
    return spare


def shutdown_spares() -> None:
    """Stops the warm spare children that ``keep_warm=True`` left running."""
    with _spares_lock:
        spares = list(_spares.values())
        _spares.clear()
    for process, conn in spares:
        conn.close()  # the spare sees EOF and exits
        process.join(_TERMINATE_GRACE_S)
        if process.is_alive():
            _stop(process)


atexit.register(shutdown_spares)


def _stop(process: Any) -> None:
    process.terminate()
    process.join(_TERMINATE_GRACE_S)
    if process.is_alive():
        process.kill()
        process.join(_TERMINATE_GRACE_S)


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def run_isolated(
    fn: Callable[..., Any],
    *args: Any,
    timeout: float | None = None,
    max_memory: int | float | str | None = None,
    env: Mapping[str, str] | None = None,
    gpu_config: Mapping[str, Any] | None = None,
    poll_interval: float = 0.1,
    keep_warm: bool = False,
    preload: tuple[str, ...] = ("tensorflow",),
    **kwargs: Any,
) -> Any:
    """Runs ``fn(*args, **kwargs)`` in a fresh spawned process and returns its result.

    The keyword arguments below are run_isolated's own; every other one goes to `fn`.

    Args:
        fn: a function the child can import (defined at module level).
        timeout: seconds before the child is stopped. Defaults to `None` (no limit).
        max_memory: bound on the child's process-tree RSS, watched from the parent:
            bytes, `"8GiB"`, or a fraction of the effective limit. Defaults to `None`.
        env: environment variables for the child only (`{"CUDA_VISIBLE_DEVICES": "1"}`).
            Defaults to `None`.
        gpu_config: keyword arguments for `configure_gpus`, applied in the child before
            `fn` is imported. Defaults to `None`.
        poll_interval: seconds between the parent's checks. Defaults to `0.1`.
        keep_warm: after starting this child, start a spare one (same `env` and
            `gpu_config`) that imports `preload` and waits; the next call with the same
            settings uses it and skips the start-up. The spare holds memory while it
            waits; `shutdown_spares()` stops it (it also stops at exit).
            Defaults to `False`.
        preload: modules a spare imports ahead of its work. Defaults to `("tensorflow",)`.

    Returns:
        What `fn` returned (it must be picklable).

    Raises:
        ValueError: `fn` or its arguments cannot be sent to a child (named, with the fix).
        Exception: the exception `fn` raised, re-raised with the child's traceback as
            its `__cause__`; `ChildFailedError` when it cannot be sent back as itself.
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
    preload = tuple(preload)
    key = (tuple(sorted(overrides.items())), repr(sorted((config or {}).items())), preload)
    name = f"run_isolated:{getattr(fn, '__qualname__', 'fn')}"
    container = read_container_memory()
    kills_before = container.oom_kills if container else None
    start = time.monotonic()
    spare = _take_spare(key) if keep_warm else None
    if spare is not None:
        process, receiver = spare
        receiver.send(payload)
    else:
        process, receiver = _start_child(payload, overrides, config, (), name)
    if keep_warm:
        with _spares_lock:
            if key not in _spares:
                _spares[key] = _start_child(None, overrides, config, preload, name + ":spare")

    peak: int | None = None
    message: Any = None
    timed_out = memory_exceeded = False
    try:
        while True:
            if receiver.poll(poll_interval):
                try:
                    message = receiver.recv()
                except EOFError:
                    message = None
                break
            if not process.is_alive():
                if receiver.poll(0):
                    with contextlib.suppress(EOFError):
                        message = receiver.recv()
                break
            mem = read_process_memory(process.pid)
            if mem is not None:
                peak = max(peak or 0, mem.tree_rss)
                if bound is not None and mem.tree_rss > bound:
                    memory_exceeded = True
                    break
            if timeout is not None and time.monotonic() - start > timeout:
                timed_out = True
                break
    finally:
        if process.is_alive():
            if message is not None:
                process.join(_TERMINATE_GRACE_S)
            if process.is_alive():
                _stop(process)
        receiver.close()

    container = read_container_memory()
    kills_after = container.oom_kills if container else None
    exit_info = ChildExit(
        exitcode=process.exitcode,
        signal=_signal_name(process.exitcode),
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
    )
    name = getattr(fn, "__qualname__", repr(fn))
    if timed_out:
        raise ChildTimeoutError(
            f"run_isolated: {name} ran past timeout={timeout} s and was "
            f"stopped ({exit_info.describe()}).",
            exit_info,
        )
    if memory_exceeded:
        raise ChildMemoryLimitError(
            f"run_isolated: {name} used {format_bytes(peak)}, more than max_memory="
            f"{format_bytes(bound)}, and was stopped ({exit_info.describe()}).",
            exit_info,
        )
    if message is None:
        raise ChildKilledError(
            f"run_isolated: {name} ended without a result: {exit_info.describe()}.", exit_info
        )
    kind = message[0]
    if kind == "ok":
        return pickle.loads(message[1])
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
