"""What the predicting batch-size search measures in its child.

``measure_figures`` takes a built model: it reads the process's RSS, measures what a small
real ``fit`` adds (the runtime's own memory, which no estimate sees) and asks the step's
estimate (compile-only) at a few batch sizes. Where that estimate is only an upper bound
(TensorFlow without XLA: about 2-6x the real step on CPU), a second small real ``fit``
measures the line instead: it is both closer and cheaper than two XLA compiles.
``fit_one_step`` is the real step that confirms a batch size. Both run in a
``run_isolated`` child (``batch_predict.py``).

Example:
    >>> model, args, _ = unpack_build(build())
    >>> figures = measure_figures(model, args, (8, 512))
    >>> figures["where"], figures["added"]
    ('host', [12582912, 805306368])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras_memguard.estimate.parts import Method
from keras_memguard.isolation.calibrate import CALIBRATION_STEPS  # as calibration's: 3

__all__ = [
    "MEASURED_LINE_BATCH_SIZE",
    "fit_one_step",
    "measure_figures",
    "one_step",
]

# The second small real fit's batch size where the line is measured (see measure_figures):
# 56 samples above the first fit's 8 give a slope well above the RSS's noise.
MEASURED_LINE_BATCH_SIZE = 64


def fit_one_step(model: Any, args: tuple[Any, ...], batch_size: int) -> float | None:
    """One real training step of ``model`` on ``args`` (arrays or shapes) at ``batch_size``.

    Returns the step's loss where ``fit`` reports one.

    Example:
        >>> model, args, _ = unpack_build(build())
        >>> fit_one_step(model, args, 64)
        2.31
    """
    from keras_memguard.isolation.calibrate import small_fit_args

    small_args = small_fit_args(args, batch_size, 1)
    fit_kwargs: dict[str, Any] = {"epochs": 1, "verbose": 0}
    if small_args is args:
        fit_kwargs["steps_per_epoch"] = 1
    else:
        fit_kwargs["batch_size"] = batch_size
    history = model.fit(*small_args, **fit_kwargs)
    loss = history.history.get("loss")
    return float(loss[-1]) if loss else None


def one_step(build: Callable[[], Any], batch_size: int) -> float | None:
    """One real training step of ``build()``'s model at ``batch_size`` (in a child).

    The attempt ``find_batch_size`` runs when it is given ``build`` without a training
    function; returns the step's loss where ``fit`` reports one.
    """
    from keras_memguard.isolation.calibrate import unpack_build

    model, args, _ = unpack_build(build())
    return fit_one_step(model, args, batch_size)


def _device_total() -> int | None:
    from keras_memguard.memory_snapshot import snapshot

    totals = [gpu.total for gpu in snapshot().gpus if gpu.total]
    return min(totals) if totals else None


def measure_figures(
    model: Any, args: tuple[Any, ...], sizes: tuple[int, ...], host_bound: int | None = None
) -> dict[str, Any]:
    """In the child: a small real fit of the built model measured, the estimate at ``sizes``.

    Returns ``unknown`` (why there is no line, or ``""``), ``where`` (``"host"`` or
    ``"device"``), ``line`` (how the line was obtained: the step estimate's method, or
    ``"measured"``), ``sizes`` (the batch sizes of the line's points), ``added`` (the
    bytes ``fit`` adds) and ``device`` (the known bytes on the device) at each of them; on
    the host ``built`` (the RSS once built) and ``measured`` (what the small fit added), on
    a device ``total`` (its memory). On the host, when the step estimate would only be an
    upper bound, the line's points are two small real fits, at ``sizes[0]`` and at
    ``MEASURED_LINE_BATCH_SIZE`` (at most the largest size, the samples given, and what
    ``host_bound`` leaves room for); the estimate's upper bound is used instead where
    that second size would be under twice the first, or the two fits measured no growth.
    """
    from keras_memguard.backends.step import build_for_fit, expected_step_method
    from keras_memguard.estimate.fit import fit_added_bytes, only_shapes, shapes_part
    from keras_memguard.estimate.inputs import input_parts
    from keras_memguard.estimate.parts import MemoryEstimate
    from keras_memguard.estimate.specs import fit_spec
    from keras_memguard.estimate.static import model_parts
    from keras_memguard.estimate.step import step_part_estimator
    from keras_memguard.isolation.calibrate import measure_fit_peak, small_fit_args
    from keras_memguard.probes.process import read_process_memory

    x, y = args[0], args[1] if len(args) > 1 else None
    spec, _ = fit_spec(x, y, sizes[0], model=model)
    build_for_fit(model, spec)
    figures: dict[str, Any] = {"added": [], "device": [], "unknown": ""}
    resident = model_parts(model)
    if resident[0].where == "host":  # measured first, in a process that compiled nothing
        memory = read_process_memory()
        figures["built"] = memory.rss if memory is not None else 0
        small_args = small_fit_args(args, sizes[0], CALIBRATION_STEPS)
        if small_args is args:  # a pipeline runs at its own batch size
            figures["unknown"] = "build's data is a pipeline: give arrays or shapes"
            return figures
        try:
            figures["measured"] = measure_fit_peak(
                model, *small_args, batch_size=sizes[0], epochs=1
            )
        except Exception as err:  # said after the step's estimate, which may say more
            figures["calibration"] = f"{type(err).__name__}: {err}"
        if "calibration" not in figures and expected_step_method(model) == "upper bound":
            measured = _measured_line(model, args, sizes, figures, host_bound)
            if measured is not None:
                return measured
    figures["sizes"] = list(sizes)
    step_at = step_part_estimator(model, spec)
    for size in sizes:
        step = step_at(size)
        if step.method is Method.UNKNOWN:
            figures["unknown"] = f"the step's temporaries at batch {size}: {step.detail}"
            return figures
        if only_shapes(x):
            inputs: tuple[Any, ...] = (shapes_part(spec, size),)
        else:
            inputs = input_parts(x if y is None else (x, y), batch_size=size)
        parts = (*resident, step, *inputs)
        estimate = MemoryEstimate(parts=parts, where=step.where, batch_size=size)
        figures["where"] = step.where
        figures["line"] = step.method.value
        figures["added"].append(fit_added_bytes(estimate))
        figures["device"].append(
            sum(p.bytes for p in parts if p.bytes is not None and p.where == "device")
        )
    if figures["where"] == "device":
        figures["total"] = _device_total()
    elif "calibration" in figures:
        figures["unknown"] = f"the small real fit failed: {figures['calibration']}"
    return figures


def _measured_line(
    model: Any,
    args: tuple[Any, ...],
    sizes: tuple[int, ...],
    figures: dict[str, Any],
    host_bound: int | None,
) -> dict[str, Any] | None:
    """``figures`` with the host line measured by a second small real fit, or ``None``.

    The points are the process's peak RSS (absolute, so that what the first fit left
    behind is not counted twice) above the RSS once built, at ``sizes[0]`` and at the
    second size; the second fit retraces the step, which makes the slope, if anything,
    a little high. The second size stays where the first fit's figure, scaled whole with
    the batch (an overestimate), is under ``host_bound``: a child stopped there would
    lose every figure. ``None`` (use the estimate) where no second size at least twice
    the first is left, or where the second fit measured no more than the first: noise
    larger than the step's memory per sample, which would read as "any batch fits".
    """
    import numpy as np
    from keras import tree

    from keras_memguard.backends.step import first_fit_runtime
    from keras_memguard.isolation.calibrate import measure_fit_peak, small_fit_args
    from keras_memguard.probes.process import read_process_memory

    small, second = sizes[0], min(MEASURED_LINE_BATCH_SIZE, sizes[-1])
    runtime = (first_fit_runtime() or (0, ""))[0]  # paid once, not per sample
    scaled = figures["measured"] - runtime
    if host_bound is not None and scaled > 0:
        room = host_bound - figures["built"] - runtime
        second = min(second, int(small * room / scaled))
    if second < 2 * small:
        return None
    second_args = small_fit_args(args, second, CALIBRATION_STEPS)
    samples = min(int(np.shape(leaf)[0]) for leaf in tree.flatten(second_args))
    if samples < second * CALIBRATION_STEPS:  # fewer samples than asked for: as many
        second = samples // CALIBRATION_STEPS
        if second < 2 * small:
            return None
        second_args = small_fit_args(args, second, CALIBRATION_STEPS)
    memory = read_process_memory()
    before = memory.rss if memory is not None else figures["built"]
    try:
        added = measure_fit_peak(model, *second_args, batch_size=second, epochs=1)
    except Exception as err:
        figures["unknown"] = f"the second small real fit (batch {second}) failed: {err!r}"
        return figures
    at_second = before + added - figures["built"]
    if at_second <= figures["measured"]:
        return None
    figures.update(
        where="host",
        line="measured",
        sizes=[small, second],
        added=[figures["measured"], at_second],
        device=[0, 0],
    )
    return figures
