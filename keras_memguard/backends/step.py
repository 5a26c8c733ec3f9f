"""The training step's own memory, asked of the framework without running the step.

Each framework answers in ``backends/<framework>/estimate.py`` (the same function,
``step_estimator(model, spec)``, in each), from the compiler's buffer assignment (XLA
under JAX and TensorFlow) or a trace under fake tensors (PyTorch). This module holds
what they share: the per-sample input spec, the answer (``StepMemory``), building the
model's state the way ``fit`` does, and picking the framework's module.

``step_estimator`` prepares once (builds the model, its compiled loss and metrics and the
optimizer's variables, exactly as ``fit`` does before its first step) and returns a
function of the batch size, so asking at several batch sizes repeats only the compile or
the trace.

Example:
    >>> spec = (BatchSpec((28, 28), "float32"), BatchSpec((), "int32"))
    >>> at = step_estimator(model, spec)       # builds what fit would build
    >>> at(64).temporaries                     # bytes live only during one step
    12845056
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keras_memguard.backends.base import BACKENDS, backend_name

__all__ = [
    "BatchSpec",
    "StepEstimator",
    "StepMemory",
    "batch_structure",
    "build_for_fit",
    "expected_step_method",
    "first_fit_runtime",
    "step_estimator",
]


@dataclass(frozen=True)
class BatchSpec:
    """One input's per-sample shape (the batch dimension left out) and dtype name."""

    shape: tuple[int, ...]
    dtype: str

    def nbytes(self, batch_size: int) -> int:
        import numpy as np

        count = batch_size
        for dim in self.shape:
            count *= dim
        return count * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class StepMemory:
    """What one training step needs beyond the state and the batch it is given, in bytes.

    Attributes:
        temporaries: bytes live only during the step (activations, their gradients,
            scratch buffers, the step's non-donated outputs); ``None`` when unknown.
        method: how it was obtained: ``"compiled"``, ``"traced"``, ``"upper bound"`` or
            ``"unknown"`` (the values of ``keras_memguard.estimate.parts.Method``).
        detail: what was asked and what came back, or why it is unknown.
        arguments: the bytes the step was given (state and batch), where reported.
        platform: where the step runs: ``"cpu"``, ``"gpu"``, ... (``None`` if unknown).
    """

    temporaries: int | None
    method: str
    detail: str
    arguments: int | None = None
    platform: str | None = None

    @classmethod
    def unknown(cls, reason: str) -> StepMemory:
        return cls(None, "unknown", reason)


StepEstimator = Callable[[int], StepMemory]


def batch_structure(spec: Any, batch_size: int, make: Callable[[tuple[int, ...], str], Any]) -> Any:
    """``spec`` with each ``BatchSpec`` replaced by ``make((batch_size, *shape), dtype)``."""
    from keras import tree

    return tree.map_structure(lambda leaf: make((batch_size, *leaf.shape), leaf.dtype), spec)


def _symbolic_build(model: Any, data_batch: Any) -> None:
    """Keras's private ``Trainer._symbolic_build`` (checked: Keras 3.15.1), as ``fit`` calls it."""
    model._symbolic_build(data_batch=data_batch)


def build_for_fit(model: Any, spec: Any) -> str | None:
    """Builds the model, compiled loss and metrics and the optimizer as ``fit`` would.

    Creating the optimizer's variables is what ``fit`` does before its first step; the
    estimate needs them because the step reads and writes them. Returns ``None``, or why
    the model cannot be estimated.
    """
    import keras

    if not isinstance(model, keras.Model):
        return f"{type(model).__name__} is not a keras.Model"
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        return "the model is not compiled (call model.compile(optimizer, loss) first)"
    try:
        _symbolic_build(model, batch_structure(spec, 1, keras.KerasTensor))
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    except Exception as err:  # an unbuildable model is an unknown part, not a crash
        return f"cannot build the model for this input: {type(err).__name__}: {err}"
    return None


def expected_step_method(model: Any) -> str:
    """The ``method`` the step estimate of ``model`` will report, known before any compile.

    Example:
        >>> expected_step_method(model)          # TensorFlow, jit_compile=False
        'upper bound'
    """
    name = backend_name()
    if name not in BACKENDS:
        return "unknown"
    module = importlib.import_module(f"keras_memguard.backends.{name}.estimate")
    method: str = module.step_method(model)
    return method


def step_estimator(model: Any, spec: Any) -> StepEstimator:
    """Prepares the step estimate of ``model`` for inputs ``spec``; returns ``f(batch_size)``.

    ``spec`` is the structure of one batch, ``(x, y)`` or ``(x, y, sample_weight)``,
    whose leaves are ``BatchSpec``. The returned function never raises: a failure is a
    ``StepMemory`` with ``method="unknown"`` and the reason.
    """
    name = backend_name()
    if name not in BACKENDS:
        reason = f"the {name!r} backend has no step estimate (only {', '.join(BACKENDS)})"
        return lambda batch_size: StepMemory.unknown(reason)
    problem = build_for_fit(model, spec)
    if problem is not None:
        return lambda batch_size: StepMemory.unknown(problem)
    module = importlib.import_module(f"keras_memguard.backends.{name}.estimate")
    estimator: StepEstimator = module.step_estimator(model, spec)
    return estimator


def first_fit_runtime(convolution: bool = False) -> tuple[int, str] | None:
    """The framework's own memory at a process's first fit on CPU, and the version measured.

    A figure measured once per framework version (``FIRST_FIT_RUNTIME`` in
    ``backends/<framework>/estimate.py``), not for this model; with ``convolution``, the
    figure for a tiny convolutional model where the backend has one
    (``FIRST_FIT_RUNTIME_CONVOLUTION``: PyTorch's convolution kernels page in more of
    its library). ``None`` for a backend without one.

    Example:
        >>> first_fit_runtime()   # under JAX
        (39845888, 'jax 0.10.2')
    """
    name = backend_name()
    if name not in BACKENDS:
        return None
    module = importlib.import_module(f"keras_memguard.backends.{name}.estimate")
    figure: tuple[int, str] | None = getattr(module, "FIRST_FIT_RUNTIME", None)
    if convolution:
        figure = getattr(module, "FIRST_FIT_RUNTIME_CONVOLUTION", figure)
    return figure
