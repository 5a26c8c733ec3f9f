"""What the leak code needs to know of JAX's arrays: their type and sizes.

Example:
    >>> describe(jnp.zeros((32, 8)))
    ((32, 8), 'float32', 1024, 'TFRT_CPU_0')

For the growth classifier (issue #27), :func:`compile_counter` counts JAX's compilations
through ``jax.monitoring``: each XLA compilation
(``/jax/core/compile/backend_compile_duration``, with the jitted function's name) and
each trace (``/jax/core/compile/jaxpr_trace_duration``), whose input types are read
from the tracing frame (``in_type``) where this JAX version keeps them there.
"""

from __future__ import annotations

import sys
from typing import Any

from keras_memguard.backends.compiles import CompileLog
from keras_memguard.backends.jax import compat
from keras_memguard.compat import resolve
from keras_memguard.errors import warn_once

__all__ = [
    "COMPILE_EVENT",
    "TRACE_EVENT",
    "JaxCompileCounter",
    "cannot_travel",
    "compile_counter",
    "describe",
    "tensor_types",
]


def tensor_types() -> tuple[type, ...]:
    """JAX's concrete array type (``jax.Array`` is an ABC), whose buffers are XLA's."""
    if "jax" not in sys.modules:
        return ()
    kind = resolve(compat.ARRAY_IMPL)
    return (kind,) if kind is not None else ()


def describe(obj: Any) -> tuple[tuple[int, ...], str, int, str]:
    """``(shape, dtype, nbytes, devices)`` of a JAX array (0 bytes once deleted)."""
    nbytes = 0 if obj.is_deleted() else int(obj.nbytes)  # donated or deleted: no buffer
    device = ",".join(sorted(str(d) for d in obj.devices()))
    return tuple(obj.shape), str(obj.dtype), nbytes, device


def cannot_travel(value: Any) -> str | None:
    """Why ``value`` cannot go to another process: nothing known here (arrays pickle)."""
    return None


COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


def _traced_shapes() -> tuple[str, ...] | None:
    """The input types of the trace being recorded, e.g. ``("float32[43,8]",)``."""
    frame: Any = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            return None
        found = frame.f_locals.get("in_type")
        if found is not None:
            try:
                return tuple(a.str_short() for a in getattr(found, "vals", found))
            except Exception:
                return None
        frame = frame.f_back
    return None


class JaxCompileCounter(CompileLog):
    """Counts JAX's compilations by function while started."""

    def __init__(self) -> None:
        super().__init__("jax.monitoring")
        self._monitoring: Any = None

    def _listener(self, event: str, duration: float, **kwargs: Any) -> None:
        try:
            name = str(kwargs.get("fun_name", "?"))
            if event == COMPILE_EVENT:
                self.record(name)
            elif event == TRACE_EVENT:
                shapes = _traced_shapes()
                if shapes is not None:
                    self.note_shapes(name, shapes)
        except Exception:  # a listener must never break a compilation
            pass

    def start(self) -> None:
        monitoring = sys.modules.get("jax.monitoring")
        if monitoring is None or self._monitoring is not None:
            return
        monitoring.register_event_duration_secs_listener(self._listener)
        self._monitoring = monitoring

    def stop(self) -> None:
        monitoring, self._monitoring = self._monitoring, None
        if monitoring is None:
            return
        try:
            monitoring.unregister_event_duration_listener(self._listener)
        except Exception as err:  # an older JAX: the listener stays, and does nothing
            warn_once("jax-monitoring", f"keras-memguard cannot remove its JAX listener: {err}")


def compile_counter() -> JaxCompileCounter | None:
    """A counter of JAX's compilations; ``None`` where JAX is not loaded."""
    if "jax.monitoring" not in sys.modules:
        return None
    return JaxCompileCounter()
