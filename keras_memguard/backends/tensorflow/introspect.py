"""What the leak code needs to know of TensorFlow's tensors: their types and sizes.

Example:
    >>> describe(tf.zeros([32, 8]))
    ((32, 8), 'float32', 1024, 'cpu:0')

For the growth classifier (issue #27), :func:`compile_counter` counts ``tf.function``
traces: TensorFlow exposes no event per trace, but each ``tf.function`` keeps the
concrete functions it traced (one per input signature) in its function cache; the
counter finds the live ``tf.function`` objects through ``gc`` when polled (at traced
epoch ends only) and counts the concrete functions new since ``start()``, with their
input signatures.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from keras_memguard.backends.compiles import CompileLog
from keras_memguard.backends.tensorflow import compat
from keras_memguard.compat import resolve

__all__ = ["TfTraceCounter", "cannot_travel", "compile_counter", "describe", "tensor_types"]


def tensor_types() -> tuple[type, ...]:
    """Eager tensors and variables, whose buffers ``tracemalloc`` does not see."""
    if "tensorflow" not in sys.modules:
        return ()
    found = (resolve(compat.EAGER_TENSOR), resolve(compat.RESOURCE_VARIABLE))
    return tuple(kind for kind in found if kind is not None)


def describe(obj: Any) -> tuple[tuple[int | None, ...], str, int, str]:
    """``(shape, dtype, nbytes, device)`` of a TensorFlow tensor or variable."""
    shape = tuple(obj.shape.as_list())
    nbytes = int(obj.dtype.size * (obj.shape.num_elements() or 0))
    device = obj.device.rsplit("/", 1)[-1].lower().replace("device:", "") or "?"
    return shape, obj.dtype.name, nbytes, device


def cannot_travel(value: Any) -> str | None:
    """Why ``value`` cannot go to another process: tf.data's datasets and iterators."""
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(value).__mro__}
    if any(n.startswith("tensorflow.") and n.endswith("DatasetV2") for n in names):
        return "a tf.data.Dataset cannot be sent to another process"
    if any(n.startswith("tensorflow.") and "Iterator" in n for n in names):
        return "a tf.data iterator cannot be sent to another process"
    return None


def _functions() -> list[Any]:
    """The live ``tf.function`` objects (one ``gc`` pass)."""
    kind = resolve(compat.TF_FUNCTION, loaded_only=True)
    if kind is None:
        return []
    objects = gc.get_objects()  # by exact type, through the MRO: isinstance is 30x slower here
    kinds = {t for t in set(map(type, objects)) if kind in t.__mro__}
    found = [obj for obj in objects if type(obj) in kinds]
    del objects
    return found


def _concrete(function: Any) -> list[Any]:
    cache = getattr(function, compat.FUNCTION_CACHE, None)
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
