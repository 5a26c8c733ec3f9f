"""The entry point of a ``run_isolated`` child: a plain ``python`` subprocess.

The parent starts ``python -c "...; main()" FD PARENT_PID PATH`` in a new session. The
child never runs the parent's script unless it may (see ``_transfer``): the work arrives
over the connection on file descriptor ``FD``:

1. ``(gpu_config, preload)``: configure GPUs, import ``preload`` (a warm spare stops here
   and waits);
2. a header (empty when nothing of ``__main__`` travels): how to rebuild ``__main__``;
3. the pickled ``(fn, args, kwargs)``; it runs, and one reply goes back:
   ``("ok", result)``, ``("error", exc, type_name, text, traceback)``,
   ``("exit", code)`` for ``SystemExit`` or ``("unimportable", why, traceback)``.

A watchdog thread ends the child's descendants and process group when the parent is gone (the
parent was killed, so it could not end the child itself).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import shutil
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from keras_memguard.isolation._transfer import dumps_reply, prepare_main

_PARENT_CHECK_S = 0.5


def _watch_parent(parent_pid: int) -> None:
    """Ends this process group (this child and what it started) once the parent is gone."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_CHECK_S)
        with contextlib.suppress(Exception):  # descendants that left the group too
            import psutil

            for proc in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(0), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="memguard-parent-watch", daemon=True).start()


def _error_reply(err: BaseException) -> tuple[Any, ...]:
    text = traceback.format_exc()
    name = f"{type(err).__module__}.{type(err).__qualname__}"
    exc_bytes: bytes | None = None
    with contextlib.suppress(Exception):
        data = dumps_reply(err)
        pickle.loads(data)  # an exception that pickles but cannot be rebuilt
        exc_bytes = data
    return ("error", exc_bytes, name, str(err), text)


def serve(conn: Any) -> int:
    """Runs the setup and the one piece of work from ``conn``; returns the exit code."""
    from keras_memguard.isolation import run as isolation

    try:
        gpu_config, preload = conn.recv()
    except EOFError:
        return 0
    fn: Any = None
    try:
        if gpu_config is not None:
            from keras_memguard.backends.configure import configure_gpus

            isolation.child_gpu_report = configure_gpus(**gpu_config)
        for module in preload:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        try:
            header = conn.recv_bytes()
        except EOFError:  # a warm spare that was not needed
            return 0
        if header:
            prepare_main(header)
        payload = conn.recv_bytes()
        try:
            fn, args, kwargs = pickle.loads(payload)
        except Exception as err:
            conn.send(("unimportable", f"{type(err).__name__}: {err}", traceback.format_exc()))
            return 1
        result = fn(*args, **kwargs)
    except SystemExit as err:
        code = err.code
        conn.send(("exit", code if code is None or isinstance(code, int) else str(code)))
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException as err:  # everything else goes back to the parent
        conn.send(_error_reply(err))
        return 1
    try:
        data = dumps_reply(result)
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
        return 1
    conn.send(("ok", data))
    return 0


def main() -> None:
    """``python -c`` entry: ``argv[1]`` the connection's fd, ``argv[2]`` the parent's pid."""
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    _watch_parent(parent_pid)
    conn = Connection(fd)
    code = serve(conn)
    conn.close()
    # The reply is sent: skip the interpreter's teardown (seconds with TensorFlow or
    # JAX loaded); the parent ends whatever this process started.
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    if "multiprocessing.process" in sys.modules:  # its exit hook would remove it
        tempdir = sys.modules["multiprocessing.process"].current_process()._config.get("tempdir")
        if tempdir:
            shutil.rmtree(tempdir, ignore_errors=True)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
