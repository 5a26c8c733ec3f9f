"""The buffers of a ``tf.data`` pipeline, read from its Python objects without running it.

``pipeline_buffers(dataset)`` walks a ``tf.data.Dataset`` from its last transformation to
its sources and returns one ``Buffer`` per buffer that holds elements:

======================  ==================================================  ============
part                    bytes                                               method
======================  ==================================================  ============
``shuffle buffer``      min(buffer_size, input cardinality) x element       exact
``cache``               input cardinality x element (in-memory cache only)  exact
``prefetch``            buffer_size x element                               upper bound
``parallel map``        num_parallel_calls x output element                 upper bound
``batch``               batch_size x input element (the batch in assembly)  exact
``dataset tensors``     the tensors ``from_tensor_slices``/``from_tensors``  exact
                        hold
======================  ==================================================  ============

An element's size comes from the node's ``element_spec`` (a batch's from its input
element x batch size); a dimension known only at run time, a string or a ragged
component makes that part unknown, with the reason. ``AUTOTUNE`` parallelism is bounded
by the cores (tf.data runs at most one call per core); an ``AUTOTUNE`` prefetch depth is
unknown (tf.data picks it at run time).

Why the Python objects and not the pipeline's GraphDef (``DatasetToGraphV2``): the
GraphDef serialises every constant, so ``from_tensor_slices`` of a 100 MB array costs
a 100 MB copy and about a second, where the Python walk costs well under a millisecond.
The walk reads private attributes (``_inputs()``, ``_buffer_size``, ...), stable since
TF 2.0 but private: they are read in ``_node_params`` only, and any failure makes the
whole pipeline one unknown part with one warning.

Example:
    >>> dataset = tf.data.Dataset.from_tensor_slices(images).shuffle(12_000).batch(32)
    >>> pipeline_buffers(dataset)[1]
    Buffer(name='shuffle buffer', bytes=7225344000, method='exact', detail='12,000 x 588.0 KiB')
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from keras_memguard.backends.pipeline import Buffer
from keras_memguard.errors import warn_once
from keras_memguard.sizes import format_bytes

__all__ = ["AUTOTUNE", "is_dataset", "pipeline_buffers"]

AUTOTUNE = -1
_INFINITE, _UNKNOWN = -1, -2  # tf.data's cardinality codes
_MAX_NODES = 1000
_TENSORS_SHOWN = 2**20  # source tensors below this are arguments, not data


def is_dataset(x: Any) -> bool:
    """Whether ``x`` is a ``tf.data.Dataset`` (checked without importing TensorFlow)."""
    if not type(x).__module__.startswith("tensorflow"):
        return False
    return any(cls.__name__ == "DatasetV2" for cls in type(x).__mro__)


def _kind(node: Any) -> str:
    """``_ParallelMapDataset`` -> ``parallelmap``: the transformation's name."""
    return re.sub(r"(^_+|Dataset(V\d)?$)", "", type(node).__name__).lower()


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value.numpy()) if hasattr(value, "numpy") else int(value)
    except (TypeError, ValueError):
        return None


def _node_params(node: Any) -> tuple[list[Any], dict[str, Any]]:
    """A node's input datasets and its parameters: the only place private names are read."""
    inputs = list(node._inputs())
    params = {
        name: getattr(node, f"_{name}")
        for name in ("buffer_size", "batch_size", "num_parallel_calls", "filename", "tensors")
        if hasattr(node, f"_{name}")
    }
    return inputs, params


def _spec_bytes(spec: Any) -> tuple[int | None, str]:
    """Bytes of one element with this ``element_spec``, or ``None`` and why not."""
    import tensorflow as tf

    total = 0
    for leaf in tf.nest.flatten(spec, expand_composites=False):
        if not isinstance(leaf, tf.TensorSpec):
            return None, f"a {type(leaf).__name__} component has no fixed size"
        if leaf.dtype == tf.string or leaf.dtype == tf.variant:
            return None, f"a {leaf.dtype.name} component has no fixed size"
        if not leaf.shape.is_fully_defined():
            return None, f"shape {leaf.shape} is known only at run time"
        total += leaf.shape.num_elements() * leaf.dtype.size
    return total, ""


class _Walk:
    """One pass over a pipeline: element sizes are worked out once per node."""

    def __init__(self) -> None:
        self.parts: list[Buffer] = []
        self._bytes: dict[int, tuple[int | None, str]] = {}
        self._names: dict[str, int] = {}

    def element(self, node: Any) -> tuple[int | None, str]:
        """Bytes of one element ``node`` yields; a batch's from its input's."""
        if id(node) in self._bytes:
            return self._bytes[id(node)]
        size, why = _spec_bytes(node.element_spec)
        inputs, params = _node_params(node)
        if size is None and len(inputs) == 1:
            if _kind(node) in ("batch", "parallelbatch") and "batch_size" in params:
                inner, why_inner = self.element(inputs[0])
                batch = _int(params["batch_size"])
                if inner is not None and batch is not None:
                    size, why = batch * inner, ""
                elif inner is None:
                    why = why_inner
            elif node.element_spec == inputs[0].element_spec:
                size, why = self.element(inputs[0])
        self._bytes[id(node)] = (size, why)
        return size, why

    def add(self, name: str, count: int | None, node: Any, method: str, note: str) -> None:
        self._names[name] = self._names.get(name, 0) + 1
        label = name if self._names[name] == 1 else f"{name} ({self._names[name]})"
        size, why = self.element(node)
        if count is None or size is None:
            reason = note if count is None and note else why
            self.parts.append(Buffer.unknown(label, reason))
            return
        detail = f"{count:,} x {format_bytes(size)}" + (f"; {note}" if note else "")
        self.parts.append(Buffer(label, count * size, method, detail))

    def visit(self, node: Any) -> list[Any]:
        inputs, params = _node_params(node)
        kind = _kind(node)
        source = inputs[0] if inputs else node
        if kind == "shuffle":
            buffer = _int(params.get("buffer_size"))
            count, note = buffer, ""
            cardinality = _int(source.cardinality())
            if buffer is not None and cardinality is not None and 0 <= cardinality < buffer:
                count, note = cardinality, f"the whole dataset: fewer than buffer_size={buffer:,}"
            self.add("shuffle buffer", count, source, "exact", note)
        elif kind == "cache":
            filename: Any = params.get("filename")
            name = filename.numpy().decode() if hasattr(filename, "numpy") else filename
            if name:
                detail = f"cache file {name!r}: on disk, not in memory"
                self.parts.append(Buffer("cache", 0, "exact", detail))
            else:
                cardinality = _int(source.cardinality())
                count, note = cardinality, "in memory once the first epoch is done"
                if cardinality == _INFINITE:
                    note = "cache() of an infinite dataset (repeat() before it) grows forever"
                    count = None
                elif cardinality is None or cardinality < 0:
                    note = "tf.data cannot count the elements it caches (filter, generator?)"
                    count = None
                self.add("cache", count, source, "exact", note)
        elif kind == "prefetch":
            depth = _int(params.get("buffer_size"))
            if depth == AUTOTUNE:
                size, _ = self.element(node)
                least = f" (at least 1 x {format_bytes(size)})" if size is not None else ""
                why = f"prefetch(AUTOTUNE): tf.data picks the depth at run time{least}"
                self.parts.append(Buffer.unknown("prefetch", why))
            else:
                self.add("prefetch", depth, node, "upper bound", "")
        elif kind in ("parallelmap", "parallelbatch"):
            calls = _int(params.get("num_parallel_calls"))
            note = ""
            if calls == AUTOTUNE:
                calls = os.cpu_count() or 1
                note = "AUTOTUNE: at most one call per core"
            self.add(f"parallel {kind[8:]}", calls, node, "upper bound", note)
            if kind == "parallelbatch":
                self.add("batch", 1, node, "exact", "the batch in assembly")
        elif kind in ("batch", "paddedbatch"):
            self.add("batch", 1, node, "exact", "the batch in assembly")
        elif kind in ("tensorslice", "tensor") and "tensors" in params:
            self._add_tensors(params["tensors"])
        return inputs

    def _add_tensors(self, tensors: Any) -> None:
        import tensorflow as tf

        total = 0
        for leaf in tf.nest.flatten(tensors):
            shape = getattr(leaf, "shape", None)
            dtype = getattr(leaf, "dtype", None)
            if shape is None or dtype is None or dtype in (tf.string, tf.variant):
                continue
            total += math.prod(int(d) for d in shape) * dtype.size
        if total < _TENSORS_SHOWN:
            return  # a range's bounds, a generator's arguments: not data
        detail = "the source's tensors, in memory since the dataset was made"
        self.parts.append(Buffer("dataset tensors", total, "exact", detail))


def pipeline_buffers(dataset: Any) -> tuple[Buffer, ...] | None:
    """The buffers of a ``tf.data.Dataset``, last transformation first; ``None`` if not one.

    Never raises: a pipeline it cannot read is one unknown part, with one warning.
    """
    if not is_dataset(dataset):
        return None
    walk = _Walk()
    try:
        seen: set[int] = set()
        todo = [dataset]
        while todo and len(seen) < _MAX_NODES:
            node = todo.pop(0)
            if id(node) in seen:
                continue
            seen.add(id(node))
            todo.extend(walk.visit(node))
    except Exception as err:  # private attributes of another TF version
        warn_once(
            "tf-data-walk",
            f"keras-memguard cannot read this tf.data pipeline's buffers ({err!r}); "
            "its memory is left out of the pre-flight estimate.",
        )
        reason = f"the pipeline could not be read on this TensorFlow: {type(err).__name__}"
        return (Buffer.unknown("input pipeline", reason),)
    if not walk.parts:
        detail = "no buffering transformation (shuffle, cache, prefetch, parallel map, batch)"
        return (Buffer("input pipeline", 0, "exact", detail),)
    return tuple(walk.parts)
