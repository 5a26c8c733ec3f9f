"""TensorFlow introspection for the growth classifier: ``tf.function`` traces.

TensorFlow exposes no event per trace, but each ``tf.function`` keeps the concrete
functions it traced (one per input signature) in its function cache. The counter finds
the live ``tf.function`` objects through ``gc`` when it is polled (at traced epoch ends
only) and counts the concrete functions that appeared since ``start()``, with their
input signatures.

Example:
    >>> counter = compile_counter()
    >>> counter.start(); model.fit(...); counter.poll()
    >>> counter.count
    0
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from keras_memguard.backends.compiles import CompileLog

__all__ = ["TfTraceCounter", "compile_counter"]


def _functions() -> list[Any]:
    """The live ``tf.function`` objects (one ``gc`` pass)."""
    module = sys.modules.get("tensorflow.python.eager.polymorphic_function.polymorphic_function")
    kind = getattr(module, "Function", None)
    if kind is None:
        return []
    objects = gc.get_objects()  # by exact type, through the MRO: isinstance is 30x slower here
    kinds = {t for t in set(map(type, objects)) if kind in t.__mro__}
    found = [obj for obj in objects if type(obj) in kinds]
    del objects
    return found


def _concrete(function: Any) -> list[Any]:
    cache = getattr(function, "_function_cache", None)
    try:
        return list(cache.values()) if cache is not None else []
    except Exception:
        return []


def _signature(concrete: Any) -> tuple[str, ...]:
    """``("float32[32,8]", ...)`` from a concrete function's input signature."""
    import tensorflow as tf

    specs = tf.nest.flatten(getattr(concrete, "structured_input_signature", ()))
    shapes = []
    for spec in specs:
        shape, dtype = getattr(spec, "shape", None), getattr(spec, "dtype", None)
        if shape is not None and dtype is not None:
            dims = ",".join("?" if d is None else str(d) for d in shape.as_list())
            shapes.append(f"{dtype.name}[{dims}]")
    return tuple(shapes)


class TfTraceCounter(CompileLog):
    """Counts new concrete functions of the live ``tf.function`` objects."""

    def __init__(self) -> None:
        super().__init__("tf.function traces")
        self._seen: set[int] = set()
        self._keep: list[Any] = []  # keeps the seen ones alive, so ids stay unique

    def start(self) -> None:
        self._keep = [c for f in _functions() for c in _concrete(f)]
        self._seen = {id(c) for c in self._keep}

    def poll(self) -> None:
        for function in _functions():
            for concrete in _concrete(function):
                if id(concrete) in self._seen:
                    continue
                self._seen.add(id(concrete))
                self._keep.append(concrete)
                name = str(getattr(function, "__name__", None) or getattr(function, "_name", "?"))
                self.record(name, _signature(concrete))

    def stop(self) -> None:
        self._keep, self._seen = [], set()


def compile_counter() -> TfTraceCounter | None:
    """A counter of ``tf.function`` traces; ``None`` where TensorFlow is not loaded."""
    if "tensorflow" not in sys.modules:
        return None
    return TfTraceCounter()
