"""The step's temporaries as an estimate part, at one batch size or several.

``step_part_estimator(model, spec)`` prepares the framework's step estimate once
(``backends.step.step_estimator``: the model and the optimizer built as ``fit`` builds
them) and returns a function of the batch size, so a batch-size search can ask at two or
three batch sizes and repeat only the compile or the trace.

Example:
    >>> at = step_part_estimator(model, spec)
    >>> [at(size).bytes for size in (32, 64)]
    [78336192, 156672384]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras_memguard.backends.step import StepMemory, step_estimator
from keras_memguard.estimate.parts import EstimatePart, Method

__all__ = ["STEP_PART", "step_part", "step_part_estimator"]

STEP_PART = "step temporaries"


def step_part(memory: StepMemory, batch_size: int) -> EstimatePart:
    """The ``EstimatePart`` of a framework's ``StepMemory`` at ``batch_size``."""
    detail = f"batch {batch_size}: {memory.detail}"
    where = "host" if memory.platform in (None, "cpu") else "device"
    method = Method(memory.method)
    return EstimatePart(STEP_PART, memory.temporaries, method, detail, "model", where)


def step_part_estimator(model: Any, spec: Any) -> Callable[[int], EstimatePart]:
    """Prepares once; returns ``f(batch_size) -> EstimatePart`` (never raises)."""
    estimator = step_estimator(model, spec)

    def at(batch_size: int) -> EstimatePart:
        try:
            memory = estimator(batch_size)
        except Exception as err:  # a framework failure is an unknown part, never a crash
            memory = StepMemory.unknown(f"{type(err).__name__}: {err}")
        return step_part(memory, batch_size)

    return at
