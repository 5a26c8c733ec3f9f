"""The input side of an estimate: what ``fit``'s data holds in memory besides the model.

``input_parts(x, batch_size=...)`` recognises the input ``fit`` is given and returns its
parts (``side="input"``, ``where="host"``):

- NumPy arrays or tensors (a dict, list or tuple of them, such as ``(x, y)``): the
  arrays themselves (already in memory), the floatx copy Keras makes of float arrays of
  another dtype (``convert_to_sliceable`` casts float64 to float32 at each epoch's
  start: one whole copy), on TensorFlow the copy ``tf.data.Dataset.from_tensors``
  makes of them, and one batch sliced per step;
- a ``tf.data.Dataset``: its shuffle buffers, in-memory caches, prefetch depths,
  parallel calls and batches (``backends/tensorflow/input_pipeline.py``);
- a ``keras.utils.PyDataset``: the queue of ``max_queue_size`` batches its workers fill
  (plus one batch per worker process, which pickles it), from its first batch's size;
- a ``torch.utils.data.DataLoader``: ``num_workers x prefetch_factor`` batches
  (``backends/torch/input_pipeline.py``).

Anything else is one unknown part with the reason. Nothing here iterates a pipeline;
only a ``PyDataset`` and a ``DataLoader``'s dataset are asked for one item (``[0]``),
as Keras itself does before the first step.

Example:
    >>> parts = input_parts((numpy.zeros((1000, 784)), numpy.zeros(1000)), batch_size=64)
    >>> [str(part) for part in parts]
    ['input arrays: 6.0 MiB [exact] (2 arrays, already in memory)',
     'floatx copy: 3.0 MiB [exact] (2 float64 arrays cast to float32 by Keras)',
     'input batch: 196.5 KiB [exact] (64 samples of 3.1 KiB in float32)']
"""

from __future__ import annotations

import math
from typing import Any

from keras_memguard.backends.pipeline import (
    Buffer,
    dtype_bytes,
    leaf_bytes,
    pipeline_buffers,
    structure_bytes,
)
from keras_memguard.backends.pipeline import leaves as _leaves
from keras_memguard.estimate.parts import EstimatePart, Method
from keras_memguard.sizes import format_bytes

__all__ = ["INPUT_ARRAYS", "input_parts", "input_signature"]

INPUT_ARRAYS = "input arrays"
DEFAULT_BATCH_SIZE = 32  # fit's default for arrays


def _is_array(leaf: Any) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype") and len(leaf.shape) > 0


def _unknown(name: str, why: str) -> tuple[EstimatePart, ...]:
    return (EstimatePart(name, None, Method.UNKNOWN, why, "input"),)


def _array_parts(x: Any, batch_size: int | None) -> tuple[EstimatePart, ...]:
    from keras import backend

    leaves = _leaves(x)
    floatx = backend.floatx()
    total = copy = converted = sample = 0
    cast: set[str] = set()
    for leaf in leaves:
        size = leaf_bytes(leaf) or 0
        dtype = str(backend.standardize_dtype(leaf.dtype))
        values = math.prod(int(d) for d in leaf.shape)
        total += size
        per_value = size // max(values, 1)
        if backend.is_float_dtype(dtype) and dtype != floatx:
            cast.add(dtype)
            per_value = dtype_bytes(floatx) or 4
            copy += values * per_value
        converted += values * per_value
        sample += per_value * (values // max(int(leaf.shape[0]), 1))
    batch = batch_size or DEFAULT_BATCH_SIZE
    rows = min(int(leaves[0].shape[0]), batch)
    parts = [
        EstimatePart(
            INPUT_ARRAYS,
            total,
            Method.EXACT,
            f"{len(leaves)} array{'s' if len(leaves) != 1 else ''}, already in memory",
            "input",
        )
    ]
    if copy:
        detail = f"{', '.join(sorted(cast))} arrays cast to {floatx} by Keras (a whole copy)"
        parts.append(EstimatePart("floatx copy", copy, Method.EXACT, detail, "input"))
    if backend.backend() == "tensorflow":
        # ArrayDataAdapter.get_tf_dataset: Dataset.from_tensors(arrays) copies them into
        # TensorFlow's memory (measured: a fit on 256 MiB of float32 grows by ~360 MiB).
        detail = "Keras on TensorFlow wraps the arrays in tf.data (from_tensors): a copy"
        parts.append(EstimatePart("tf.data copy", converted, Method.EXACT, detail, "input"))
    detail = f"{rows} samples of {format_bytes(sample)}"
    parts.append(EstimatePart("input batch", rows * sample, Method.EXACT, detail, "input"))
    return tuple(parts)


def _pydataset_parts(dataset: Any) -> tuple[EstimatePart, ...]:
    try:
        batch = structure_bytes(dataset[0])
    except Exception as err:  # the user's __getitem__
        return _unknown("pydataset queue", f"its first batch could not be read: {err!r}")
    if batch is None:
        return _unknown("pydataset queue", "its first batch holds something without a size")
    workers = int(getattr(dataset, "workers", 1) or 1)
    processes = bool(getattr(dataset, "use_multiprocessing", False))
    queue = int(getattr(dataset, "max_queue_size", 10) or 10)
    one = EstimatePart(
        "input batch", batch, Method.EXACT, f"one batch of {format_bytes(batch)}", "input"
    )
    if workers <= 1 and not processes:
        detail = "workers=1 without multiprocessing: no queue, one batch at a time"
        return (EstimatePart("pydataset queue", 0, Method.EXACT, detail, "input"), one)
    count = queue + (workers if processes else 0)
    how = f"{workers} worker {'processes' if processes else 'threads'}"
    detail = f"max_queue_size={queue} batches of {format_bytes(batch)} filled by {how}"
    if processes:
        detail += f", + {workers} being pickled"
    return (
        EstimatePart("pydataset queue", count * batch, Method.UPPER_BOUND, detail, "input"),
        one,
    )


def _part(buffer: Buffer) -> EstimatePart:
    return EstimatePart(buffer.name, buffer.bytes, Method(buffer.method), buffer.detail, "input")


def _is_pydataset(x: Any) -> bool:
    return any(cls.__name__ == "PyDataset" for cls in type(x).__mro__)


def input_parts(x: Any, *, batch_size: int | None) -> tuple[EstimatePart, ...]:
    """The memory parts of ``fit``'s input ``x`` at ``batch_size`` (arrays' default: 32).

    Never raises: an input it cannot read is one unknown part with the reason.

    Example:
        >>> [str(p) for p in input_parts(dataset.shuffle(12_000).batch(32), batch_size=None)]
        ['batch: 18.4 MiB [exact] (1 x 18.4 MiB; the batch in assembly)',
         'shuffle buffer: 6.7 GiB [exact] (12,000 x 588.0 KiB)']
    """
    if x is None:
        return _unknown("input pipeline", "no input was given")
    buffers = pipeline_buffers(x)  # tf.data, a torch DataLoader, Grain
    if buffers is not None:
        return tuple(_part(buffer) for buffer in buffers)
    if _is_pydataset(x):
        return _pydataset_parts(x)
    leaves = _leaves(x)
    if leaves and all(_is_array(leaf) for leaf in leaves):
        try:
            return _array_parts(x, batch_size)
        except Exception as err:  # a tensor type this does not know
            return _unknown("input arrays", f"their sizes could not be read: {err!r}")
    return _unknown(
        "input pipeline",
        f"{type(x).__name__} is not an input whose buffers can be read (NumPy arrays or "
        "tensors, a tf.data.Dataset, a keras.utils.PyDataset or a torch DataLoader)",
    )


def input_signature(x: Any, batch_size: int | None) -> Any:
    """A hashable key for ``x``: the same input gives the same key, and cheaply.

    Arrays: their shapes and dtypes; a pipeline object: its identity and type.
    """
    leaves = _leaves(x)
    if leaves and all(_is_array(leaf) for leaf in leaves):
        return (
            "arrays",
            batch_size,
            tuple((tuple(int(d) for d in leaf.shape), str(leaf.dtype)) for leaf in leaves),
        )
    return (type(x).__qualname__, id(x), batch_size)
