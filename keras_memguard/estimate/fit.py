"""``estimate_fit_memory``: a ``fit``'s predicted peak memory, in parts, before it runs.

The parts: the model's variables, the optimizer's state and the gradients (exact, from
shapes and dtypes), the training step's temporaries (the framework's compiler or a trace
under fake tensors: ``backends/<framework>/estimate.py``), the input pipeline's buffers
(shuffle, cache, prefetch, parallel calls, workers x queue) and the runtime's fixed
overhead. Each part says how it was obtained, or why it is unknown.

Nothing runs a step and no array is allocated for the batch; the model, its weights and
its optimizer's values are left as they were. The estimate builds what ``fit`` builds
before its first step (the model, its compiled loss and metrics, and the optimizer's
variables), since the step reads them.

Example:
    >>> estimate = estimate_fit_memory(model, x_train, y_train, batch_size=128)
    >>> print(estimate)
    predicted peak (host): 1.2 GiB
      variables: 12.1 MiB [exact] (...)
      step temporaries: 1.1 GiB [compiled] (batch 128: XLA buffer assignment: ...)
"""

from __future__ import annotations

from typing import Any

from keras_memguard.backends.base import backend_name
from keras_memguard.backends.step import build_for_fit
from keras_memguard.errors import invalid_argument
from keras_memguard.estimate.inputs import INPUT_ARRAYS, input_parts
from keras_memguard.estimate.parts import EstimatePart, MemoryEstimate, Method
from keras_memguard.estimate.specs import fit_spec, is_shape_spec
from keras_memguard.estimate.static import OPTIMIZER_STATE, VARIABLES, model_parts
from keras_memguard.estimate.step import step_part_estimator

__all__ = [
    "RESIDENT_PARTS",
    "estimate_fit_memory",
    "fit_added_bytes",
    "only_shapes",
    "shapes_part",
]

# Parts already in memory when fit starts (once the model and its optimizer are built).
RESIDENT_PARTS = frozenset({VARIABLES, OPTIMIZER_STATE, INPUT_ARRAYS})


def shapes_part(spec: Any, batch_size: int) -> EstimatePart:
    """The one batch a ``fit`` given only shapes holds; its pipeline is not known."""
    from keras import tree

    size = sum(leaf.nbytes(batch_size) for leaf in tree.flatten(spec))
    detail = f"one batch of {batch_size} from the shapes given; the input pipeline is not known"
    return EstimatePart("input batch", size, Method.EXACT, detail, side="input")


def fit_added_bytes(estimate: MemoryEstimate) -> int:
    """The known bytes ``fit`` adds to a process whose model and optimizer are built.

    What a measurement of peak RSS during ``fit`` minus RSS before it compares with.
    """
    return sum(
        part.bytes
        for part in estimate.parts
        if part.bytes is not None and part.name not in RESIDENT_PARTS
    )


def only_shapes(x: Any) -> bool:
    """Whether ``x`` is given only as shapes (``keras.Input``, ``(batch_shape, dtype)``...).

    Example:
        >>> only_shapes(keras.Input((32, 32, 3))), only_shapes(np.zeros((8, 3)))
        (True, False)
    """
    from keras import tree

    leaves = tree.flatten(x) if not is_shape_spec(x) else [x]
    return bool(leaves) and all(is_shape_spec(leaf) for leaf in leaves)


def estimate_fit_memory(
    model: Any,
    x: Any = None,
    y: Any = None,
    *,
    batch_size: int | None = None,
    step: bool = True,
) -> MemoryEstimate:
    """Predicts the peak memory of ``model.fit(x, y, batch_size=batch_size)``, in parts.

    Args:
        model: a compiled ``keras.Model``.
        x: the input as ``fit`` takes it: arrays (or a dict/list/tuple of them), a
            ``tf.data.Dataset``, a ``keras.utils.PyDataset``, a torch ``DataLoader``; or
            shapes: ``keras.Input(...)``, ``tf.TensorSpec``, ``jax.ShapeDtypeStruct`` or
            ``(batch_shape, dtype)``, or a structure of them.
        y: the targets, with arrays or shapes (the model's output shape if omitted with
            shapes). Defaults to `None`.
        batch_size: the batch size; with arrays defaults to Keras's 32, with a dataset or
            shapes it is read from them when possible. Defaults to `None`.
        step: whether to estimate the step's temporaries (seconds: a compile or a trace);
            ``False`` gives the cheap exact parts only. Defaults to `True`.

    Returns:
        A ``MemoryEstimate``: ``known_bytes`` is the predicted peak (a lower bound when
        a part is unknown), ``parts`` say where it goes and how each was obtained.

    Raises:
        ValueError: ``model`` is not a Keras model, or ``x``, ``y`` or ``batch_size`` is
            none of the accepted forms.

    Example:
        >>> estimate = estimate_fit_memory(model, keras.Input((224, 224, 3)), batch_size=64)
        >>> estimate.part("step temporaries").method
        <Method.COMPILED: 'compiled'>
    """
    import keras

    if not isinstance(model, keras.Model):
        raise invalid_argument("model", model, "a compiled keras.Model")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise invalid_argument("batch_size", batch_size, "a positive int or None")
    if not isinstance(step, bool):
        raise invalid_argument("step", step, "True or False")
    spec, size = fit_spec(x, y, batch_size, model=model)
    problem = build_for_fit(model, spec)
    parts: list[EstimatePart] = list(model_parts(model))
    notes: list[str] = []
    where = "host"
    if step:
        part = step_part_estimator(model, spec)(size)
        where = part.where
        parts.append(part)
    elif problem is not None:
        notes.append(problem)
    if only_shapes(x):
        parts.append(shapes_part(spec, size))
    else:
        parts.extend(input_parts(x if y is None else (x, y), batch_size=size))
    return MemoryEstimate(
        parts=tuple(parts),
        where=where,
        batch_size=size,
        backend=backend_name(),
        notes=tuple(notes),
    )
