"""The JAX training step's memory from XLA's buffer assignment, without running it.

Keras's ``train_function`` under JAX is a Python loop around a jitted
``train_step(state, data)``; this lowers the same ``train_step`` with
``jax.jit(..., donate_argnums=0)`` on ``ShapeDtypeStruct``s of the state and the batch,
compiles it and reads ``Compiled.memory_analysis()``: the temporaries XLA assigns,
and the outputs that are not aliased to donated inputs. Nothing is allocated and no
variable is touched; a compile takes about a second for a small model.

``memory_analysis`` is labelled unstable by JAX (checked: jax 0.10.2); it is wrapped in
:func:`compiled_memory_stats`, which fails soft to ``None``.

Example:
    >>> from keras_memguard.backends.step import BatchSpec
    >>> at = step_estimator(model, (BatchSpec((64,), "float32"), BatchSpec((), "int32")))
    >>> at(128).method
    'compiled'
"""

from __future__ import annotations

import math
import re
from typing import Any

from keras_memguard.backends.step import StepEstimator, StepMemory, batch_structure
from keras_memguard.errors import warn_once

__all__ = [
    "CHECKED",
    "FIRST_FIT_RUNTIME",
    "compiled_memory_stats",
    "cpu_convolution_scratch",
    "step_estimator",
    "step_method",
]

CHECKED = "jax 0.10.2"
# The runtime's own memory at a process's first fit on CPU (XLA's CPU client and the first
# compile, Eigen's thread pool), which no model part counts: peak RSS during a 3-step fit
# of an 8-16-2 dense model at batch 8 minus RSS before it, the lower of two fresh
# processes (jax 0.10.2, Keras 3.15.1).
FIRST_FIT_RUNTIME = (38 * 2**20, "jax 0.10.2")
_DEFINITION = re.compile(r"%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_CONVOLUTION = re.compile(
    r"= (\w+)\[([\d,]*)\]\S* convolution\(%([\w.\-]+), %[\w.\-]+\), "
    r"window=\{size=([\dx]+)[^}]*\}, dim_labels=(\w+)_\w+->(\w+)"
)
_ITEMSIZE = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "s8": 1}


def compiled_memory_stats(compiled: Any) -> Any:
    """``compiled.memory_analysis()`` (unstable in JAX; checked: jax 0.10.2), or ``None``.

    Warns once when this JAX has no such analysis or the platform does not report it.
    """
    try:
        stats = compiled.memory_analysis()
        stats.temp_size_in_bytes  # noqa: B018 - the fields this module reads
        stats.output_size_in_bytes  # noqa: B018
        stats.alias_size_in_bytes  # noqa: B018
    except Exception as err:
        warn_once(
            "jax-memory-analysis",
            f"keras-memguard cannot read JAX's memory_analysis() (checked with {CHECKED}): "
            f"{type(err).__name__}: {err}; the step's temporaries are unknown",
        )
        return None
    return stats


def cpu_convolution_scratch(hlo_text: str) -> int:
    """The largest patch buffer XLA's CPU convolutions (Eigen) allocate outside XLA's plan.

    On CPU, XLA hands a convolution to Eigen, which unfolds the input into patches
    (im2col): per output position, window x input features values. XLA's buffer
    assignment does not see that scratch; measured on CPU it is the step's largest
    temporary for convolutional models, one convolution at a time.

    Example:
        >>> cpu_convolution_scratch(compiled.as_text())
        33177600
    """
    shapes = {name: dims for name, _, dims in _DEFINITION.findall(hlo_text)}
    largest = 0
    for dtype, out_dims, operand, window, lhs_labels, out_labels in _CONVOLUTION.findall(hlo_text):
        out = [int(d) for d in out_dims.split(",") if d]
        lhs = [int(d) for d in shapes.get(operand, "").split(",") if d]
        if len(lhs) != len(lhs_labels) or len(out) != len(out_labels):
            continue
        positions = math.prod(out) // max(out[out_labels.index("f")], 1)
        taps = math.prod(int(d) for d in window.split("x"))
        patches = positions * taps * lhs[lhs_labels.index("f")]
        largest = max(largest, patches * _ITEMSIZE.get(dtype, 4))
    return largest


def _struct(variable: Any) -> Any:
    import jax

    return jax.ShapeDtypeStruct(tuple(variable.shape), variable.dtype)


def step_method(model: Any) -> str:
    """How the step's figure is obtained, known without compiling: ``"compiled"``."""
    return "compiled"


def step_estimator(model: Any, spec: Any) -> StepEstimator:
    """``f(batch_size) -> StepMemory`` for a built, compiled ``model`` (see ``backends.step``)."""
    import jax

    state = tuple(
        [_struct(v) for v in variables]
        for variables in (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
    )
    jitted = jax.jit(model.train_step, donate_argnums=0)

    def at(batch_size: int) -> StepMemory:
        data = batch_structure(spec, batch_size, jax.ShapeDtypeStruct)
        try:
            compiled = jitted.lower(state, data).compile()
        except Exception as err:
            return StepMemory.unknown(f"XLA cannot compile train_step: {type(err).__name__}: {err}")
        stats = compiled_memory_stats(compiled)
        if stats is None:
            return StepMemory.unknown(f"JAX's memory_analysis() is unavailable ({CHECKED} checked)")
        outputs = max(0, int(stats.output_size_in_bytes) - int(stats.alias_size_in_bytes))
        temp = int(stats.temp_size_in_bytes)
        detail = f"XLA buffer assignment: {temp:,} B temporaries + {outputs:,} B outputs"
        scratch = 0
        if jax.default_backend() == "cpu":
            scratch = cpu_convolution_scratch(compiled.as_text() or "")
            if scratch:
                detail += f" + {scratch:,} B convolution patches (CPU, outside XLA's plan)"
        return StepMemory(
            temporaries=temp + outputs + scratch,
            method="compiled",
            detail=detail,
            arguments=int(stats.argument_size_in_bytes),
            platform=jax.default_backend(),
        )

    return at
