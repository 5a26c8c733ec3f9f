"""The shape of one batch of a ``fit``'s input, read without running the input pipeline.

``fit_spec(x, y, batch_size)`` turns what ``estimate_fit_memory`` accepts into the
per-sample ``BatchSpec`` structure ``(x, y)`` the step estimate compiles for, and the
batch size:

- arrays (NumPy, or a framework's tensors; a dict, list or tuple of them), with ``y``;
  the batch size defaults to Keras's 32;
- a ``tf.data.Dataset`` (its ``element_spec``; the batch size from the spec, else from
  its ``batch()``, else ``batch_size``);
- a ``keras.utils.PyDataset`` (its first batch: ``dataset[0]``, as ``fit`` reads it);
- a ``torch.utils.data.DataLoader`` (its dataset's first sample and its ``batch_size``);
- shapes: ``keras.Input(...)``/``KerasTensor``, ``tf.TensorSpec``,
  ``jax.ShapeDtypeStruct`` or ``(batch_shape, dtype)``, or a structure of them; the
  batch dimension may be ``None`` when ``batch_size`` is given. Without ``y``, the
  target takes the model's output shape.

Example:
    >>> fit_spec(numpy.zeros((1000, 28, 28)), numpy.zeros(1000, "int32"), None)
    ((BatchSpec(shape=(28, 28), dtype='float32'), BatchSpec(shape=(), dtype='int32')), 32)
"""

from __future__ import annotations

from typing import Any

from keras_memguard.backends.step import BatchSpec
from keras_memguard.backends.tensorflow.compat import DATASET_PARAMETERS
from keras_memguard.errors import invalid_argument

__all__ = ["ACCEPTED_INPUTS", "fit_spec", "is_shape_spec", "spec_leaves"]

ACCEPTED_INPUTS = (
    "NumPy arrays or tensors (or a dict, list or tuple of them), a tf.data.Dataset, "
    "a keras.utils.PyDataset, a torch DataLoader, or shapes: keras.Input(...), "
    "tf.TensorSpec, jax.ShapeDtypeStruct or (batch_shape, dtype)"
)
_SPEC_TYPES = ("KerasTensor", "TensorSpec", "ShapeDtypeStruct")
DEFAULT_BATCH_SIZE = 32  # fit's own default for arrays


def _dtype_name(dtype: Any) -> str:
    from keras import backend

    return str(backend.standardize_dtype(dtype))


def is_shape_spec(value: Any) -> bool:
    """Whether ``value`` describes a tensor's shape and dtype without holding data."""
    if type(value).__name__ in _SPEC_TYPES:
        return True
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple | list)):
        return False
    if not all(dim is None or isinstance(dim, int) for dim in value[0]):
        return False
    dtype = value[1]
    return isinstance(dtype, str | type) or type(dtype).__name__.startswith("dtype")


def _shape_and_dtype(leaf: Any) -> tuple[tuple[int | None, ...], str]:
    if isinstance(leaf, tuple) and len(leaf) == 2 and not hasattr(leaf, "shape"):
        return tuple(leaf[0]), _dtype_name(leaf[1])
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{type(leaf).__name__} has no shape and dtype")
    return tuple(None if d is None else int(d) for d in shape), _dtype_name(dtype)


def _map(structure: Any, fn: Any) -> Any:
    """``fn`` over the leaves of a dict/list/tuple structure; shape specs are leaves."""
    if structure is None or is_shape_spec(structure) or hasattr(structure, "shape"):
        return None if structure is None else fn(structure)
    if isinstance(structure, dict):
        return {key: _map(value, fn) for key, value in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(_map(value, fn) for value in structure)
    return fn(structure)


def _per_sample(leaf: Any) -> BatchSpec:
    shape, dtype = _shape_and_dtype(leaf)
    if not shape:
        raise TypeError("a scalar has no batch dimension")
    if any(dim is None for dim in shape[1:]):
        raise TypeError(f"shape {shape} has an unknown dimension besides the batch")
    return BatchSpec(tuple(int(d) for d in shape[1:] if d is not None), dtype)


def _batch_dims(structure: Any) -> set[int | None]:
    dims: set[int | None] = set()
    _map(structure, lambda leaf: dims.add(_shape_and_dtype(leaf)[0][0]))
    return dims


def _dataset_batch_size(dataset: Any) -> int | None:
    """The ``batch()`` size of a ``tf.data`` pipeline, from its Python objects."""
    node = dataset
    for _ in range(100):
        size = getattr(node, DATASET_PARAMETERS["batch_size"], None)
        if size is not None:
            try:
                return int(size)
            except TypeError:
                return int(size.numpy())
        node = getattr(node, "_input_dataset", None)
        if node is None:
            return None
    return None


def _target_from_model(model: Any, x: Any) -> Any:
    import keras

    def symbolic(spec: BatchSpec) -> Any:
        return keras.KerasTensor((1, *spec.shape), spec.dtype)

    output = model.compute_output_spec(_map(x, symbolic))
    return _map(output, _per_sample)


def _kind(x: Any) -> str:
    names = {cls.__name__ for cls in type(x).__mro__}
    module = type(x).__module__
    if module.startswith("tensorflow") and "DatasetV2" in names:
        return "dataset"
    if "PyDataset" in names:
        return "pydataset"
    if "DataLoader" in names:
        return "dataloader"
    return "arrays"


def fit_spec(x: Any, y: Any, batch_size: int | None, model: Any = None) -> tuple[Any, int]:
    """``((x_spec, y_spec), batch_size)`` for one batch of ``fit(x, y, batch_size)``.

    Raises ``ValueError`` naming ``x``, ``y`` or ``batch_size`` when they cannot be read.
    """
    if x is None:
        raise invalid_argument("x", x, ACCEPTED_INPUTS)
    kind = _kind(x)
    if kind == "dataset":
        element = x.element_spec
        data = element if isinstance(element, tuple) else (element,)
        dims = _batch_dims(data)
        found = next(iter(dims)) if len(dims) == 1 else None
        batch_size = batch_size or found or _dataset_batch_size(x)
        if batch_size is None:
            raise invalid_argument(
                "batch_size", None, "a positive int", "the dataset's batch size cannot be read"
            )
        x, y = data[0], data[1] if len(data) > 1 else None
    elif kind == "pydataset":
        batch = x[0]
        data = batch if isinstance(batch, tuple) else (batch,)
        x, y = data[0], data[1] if len(data) > 1 else None
        batch_size = batch_size or next(iter(_batch_dims(x)))
    elif kind == "dataloader":
        sample = x.dataset[0]
        data = sample if isinstance(sample, tuple) else (sample,)
        batch_size = batch_size or x.batch_size
        x, y = _map(data[0], _with_batch), _map(data[1], _with_batch) if len(data) > 1 else None
    else:
        try:
            dims = _batch_dims(x)
        except TypeError as err:
            raise invalid_argument("x", x, ACCEPTED_INPUTS, str(err)) from None
        if not any(is_shape_spec(leaf) for leaf in spec_leaves(x)):
            batch_size = batch_size or DEFAULT_BATCH_SIZE
        elif batch_size is None:
            found = next(iter(dims)) if len(dims) == 1 else None
            if found is None:
                raise invalid_argument(
                    "batch_size", None, "a positive int", "the shapes leave the batch size open"
                )
            batch_size = found
    try:
        x_spec = _map(x, _per_sample)
    except (TypeError, ValueError) as err:
        raise invalid_argument("x", x, ACCEPTED_INPUTS, str(err)) from None
    try:
        y_spec = _map(y, _per_sample) if y is not None else None
    except (TypeError, ValueError) as err:
        raise invalid_argument("y", y, "the same forms as x", str(err)) from None
    if y_spec is None and model is not None:
        try:
            y_spec = _target_from_model(model, x_spec)
        except Exception:  # the step estimate then says why it cannot run without y
            y_spec = None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid_argument("batch_size", batch_size, "a positive int or None")
    return ((x_spec,) if y_spec is None else (x_spec, y_spec)), batch_size


def spec_leaves(structure: Any) -> list[Any]:
    """The leaves of ``structure``, a ``(batch_shape, dtype)`` pair counting as one.

    Example:
        >>> spec_leaves((((None, 4), "float32"), ((None,), "int32")))
        [((None, 4), 'float32'), ((None,), 'int32')]
    """
    leaves: list[Any] = []
    _map(structure, leaves.append)
    return leaves


def _with_batch(sample: Any) -> tuple[tuple[int | None, ...], str]:
    """A single sample (a tensor or a number) as a ``(batch_shape, dtype)`` spec."""
    import numpy as np

    if not hasattr(sample, "shape"):
        sample = np.asarray(sample)
    return (None, *tuple(int(d) for d in sample.shape)), _dtype_name(sample.dtype)
