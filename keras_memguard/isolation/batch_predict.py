"""Predicting the largest batch size that fits, from compile-only estimates.

The step's temporaries grow linearly with the batch size on all three backends (XLA's
buffer assignment under TensorFlow and JAX, a trace under fake tensors with PyTorch).
``predict_batch_size`` asks the estimate at two or three batch sizes in one child
process (``run_isolated``), fits the line, and picks the largest batch whose predicted
peak stays under the bound less a safety margin.

On the host the peak is the child's whole RSS, the quantity ``run_isolated``'s
``max_memory`` bounds: the RSS once the model and the optimizer are built, plus what a
real 2-step ``fit`` at a small batch added (this measures the runtime's own memory, which
the estimate cannot see), plus the line's growth from that small batch to ``b``::

    peak(b) = rss_built + measured_small + per_sample * (b - small)

On a GPU the peak is the estimate's known bytes on the device (variables, optimizer
state, gradients, the step's temporaries, the batch) at ``b``, against each device's
memory; the runtime's workspaces are left to the margin.

Example:
    >>> def build():                       # module level: it runs in a child
    ...     model = make_model(); model.compile("adam", "mse")
    ...     return model, (keras.Input((32, 32, 3)), keras.Input((10,)))
    >>> prediction = predict_batch_size(build, 1024, max_memory="2GiB")
    >>> prediction.batch_size, prediction.per_sample
    (344, 4196352.0)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from keras_memguard.errors import invalid_argument, positive_int, warn_once
from keras_memguard.estimate.parts import Method
from keras_memguard.isolation.run import run_isolated
from keras_memguard.sizes import format_bytes, parse_size

__all__ = [
    "DEFAULT_SAFETY_MARGIN",
    "BatchPrediction",
    "check_margin",
    "fit_line",
    "largest_batch",
    "one_step",
    "predict_batch_size",
    "sample_sizes",
]

DEFAULT_SAFETY_MARGIN = 0.25
CALIBRATION_BATCH_SIZE = 8
CALIBRATION_STEPS = 2


@dataclass(frozen=True)
class BatchPrediction:
    """What the predicting search saw, and the batch size it picked.

    Attributes:
        batch_size: the largest batch predicted to fit; ``None`` when no prediction
            could be made (``reason`` says why).
        where: ``"host"`` (the child's RSS) or ``"device"`` (one GPU's memory).
        bound: the bytes the peak must stay under (before the margin).
        safety_margin: the fraction of the room above ``fixed`` kept free: the batch's
            growth ``per_sample * batch_size`` stays under
            ``(1 - safety_margin) * (bound - fixed)``.
        fixed: the predicted peak at batch 0, in bytes.
        per_sample: the bytes each sample adds (the line's slope).
        sampled: ``(batch_size, predicted peak)`` where the estimate was asked.
        reason: why there is no prediction, or ``""``.
        duration_s: seconds the estimate's child took.
    """

    batch_size: int | None
    where: str = "host"
    bound: int | None = None
    safety_margin: float = DEFAULT_SAFETY_MARGIN
    fixed: float | None = None
    per_sample: float | None = None
    sampled: tuple[tuple[int, int], ...] = ()
    reason: str = ""
    duration_s: float = 0.0

    def peak(self, batch_size: int) -> int | None:
        """The predicted peak at ``batch_size``, in bytes (``None`` without a line)."""
        if self.fixed is None or self.per_sample is None:
            return None
        return int(self.fixed + self.per_sample * batch_size)

    def __str__(self) -> str:
        if self.batch_size is None:
            return f"no prediction: {self.reason}"
        return (
            f"batch {self.batch_size}: predicted peak ({self.where}) "
            f"{format_bytes(self.peak(self.batch_size))} of {format_bytes(self.bound)} "
            f"({self.safety_margin:.0%} of the room kept free); "
            f"{format_bytes(self.per_sample)} per sample"
        )


def sample_sizes(batch_size: int) -> tuple[int, ...]:
    """Where to ask the estimate: a small batch (the calibration's) and the largest.

    Example:
        >>> sample_sizes(512)
        (8, 512)
    """
    small = max(1, min(CALIBRATION_BATCH_SIZE, batch_size // 2))
    return small, max(batch_size, small + 1)


def fit_line(points: tuple[tuple[int, int], ...]) -> tuple[float, float]:
    """``(intercept, slope)`` of the least-squares line through ``(batch, bytes)`` points.

    Example:
        >>> fit_line(((8, 800), (16, 1600)))
        (0.0, 100.0)
    """
    if len(points) < 2:
        raise ValueError("a line needs two batch sizes")
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var
    return mean_y - slope * mean_x, slope


def largest_batch(
    fixed: float, per_sample: float, bound: float, margin: float, low: int, high: int
) -> int | None:
    """The largest batch in ``[low, high]`` whose growth keeps ``margin`` of the room free.

    The room is what the bound leaves above the fixed part: ``bound - fixed``; the batch
    may take ``(1 - margin)`` of it: ``per_sample * b <= (1 - margin) * (bound - fixed)``.
    ``None`` when even ``low`` does not fit.

    Example:
        >>> largest_batch(100.0, 10.0, 1000.0, 0.2, 1, 512)
        72
    """
    limit = bound - margin * (bound - fixed)
    if per_sample <= 0:
        return high if fixed + per_sample * high <= limit else None
    best = int((limit - fixed) // per_sample)
    return None if best < low else min(best, high)


def check_margin(safety_margin: object) -> float:
    """``safety_margin`` if it is a fraction in [0, 1); else the ``ValueError`` naming it."""
    if (
        isinstance(safety_margin, bool)
        or not isinstance(safety_margin, (int, float))
        or not 0 <= safety_margin < 1
    ):
        raise invalid_argument("safety_margin", safety_margin, "a fraction in [0, 1), like 0.25")
    return float(safety_margin)


def one_step(build: Callable[[], Any], batch_size: int) -> float | None:
    """One real training step of ``build()``'s model at ``batch_size`` (in a child).

    The attempt ``find_batch_size`` runs when it is given ``build`` without a training
    function; returns the step's loss where ``fit`` reports one.
    """
    from keras_memguard.isolation.calibrate import small_fit_args, unpack_build

    model, args, _ = unpack_build(build())
    small_args = small_fit_args(args, batch_size, 1)
    fit_kwargs: dict[str, Any] = {"epochs": 1, "verbose": 0}
    if small_args is args:
        fit_kwargs["steps_per_epoch"] = 1
    else:
        fit_kwargs["batch_size"] = batch_size
    history = model.fit(*small_args, **fit_kwargs)
    loss = history.history.get("loss")
    return float(loss[-1]) if loss else None


def _device_total() -> int | None:
    from keras_memguard.memory_snapshot import snapshot

    totals = [gpu.total for gpu in snapshot().gpus if gpu.total]
    return min(totals) if totals else None


def _predict_child(build: Callable[[], Any], sizes: tuple[int, ...]) -> dict[str, Any]:
    """In the child: build, measure a small real fit, estimate at ``sizes``."""
    from keras_memguard.backends.step import build_for_fit
    from keras_memguard.estimate.fit import fit_added_bytes, only_shapes, shapes_part
    from keras_memguard.estimate.inputs import input_parts
    from keras_memguard.estimate.parts import MemoryEstimate
    from keras_memguard.estimate.specs import fit_spec
    from keras_memguard.estimate.static import model_parts
    from keras_memguard.estimate.step import step_part_estimator
    from keras_memguard.isolation.calibrate import measure_fit_peak, small_fit_args, unpack_build
    from keras_memguard.probes.process import read_process_memory

    model, args, _ = unpack_build(build())
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
        figures["added"].append(fit_added_bytes(estimate))
        figures["device"].append(
            sum(p.bytes for p in parts if p.bytes is not None and p.where == "device")
        )
    if figures["where"] == "device":
        figures["total"] = _device_total()
    elif "calibration" in figures:
        figures["unknown"] = f"the small real fit failed: {figures['calibration']}"
    return figures


def _host_bound(max_memory: int | float | str | None) -> int | None:
    from keras_memguard.memory_snapshot import snapshot

    limit = snapshot(gpus=False).effective_limit
    if max_memory is None:
        return limit
    return parse_size(max_memory, name="max_memory").resolve(limit)


def predict_batch_size(
    build: Callable[[], Any],
    batch_size: int,
    *,
    min_batch_size: int = 1,
    max_memory: int | float | str | None = None,
    device_memory: int | float | str | None = None,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
    timeout: float | None = 600,
    env: Mapping[str, str] | None = None,
    gpu_config: Mapping[str, Any] | None = None,
    keep_warm: bool = False,
    preload: tuple[str, ...] | None = None,
) -> BatchPrediction:
    """Predicts the largest batch size in ``[min_batch_size, batch_size]`` that fits.

    Args:
        build: a module-level function returning ``(model, data)`` (``data`` is ``x``
            or ``(x, y)``: arrays, or shapes such as ``keras.Input((32, 32, 3))``) with
            the model compiled as the training compiles it; it runs in a child.
        batch_size: the largest batch size to consider.
        min_batch_size: the smallest. Defaults to `1`.
        max_memory: the host bound (the child's RSS, as `run_isolated` bounds it):
            bytes, `"8GiB"`, or a fraction of the effective limit. Defaults to `None`
            (the effective limit).
        device_memory: the bound on one GPU's memory when the model runs on a GPU:
            bytes or a fraction of the device's total. Defaults to `None` (its total).
        safety_margin: the fraction of the room above the fixed part (the bound less
            the predicted peak at batch 0) kept free, in [0, 1). Defaults to `0.25`.
        timeout: seconds for the estimate's child. Defaults to `600`.
        env: environment variables for the child. Defaults to `None`.
        gpu_config: `configure_gpus` arguments for the child. Defaults to `None`.
        keep_warm: start a spare child (`run_isolated`'s) while the estimate runs, for
            the confirming attempt. Defaults to `False`.
        preload: what the spare imports. Defaults to `None` (the framework).

    Returns:
        A :class:`BatchPrediction`; its ``batch_size`` is ``None`` with the ``reason``
        when the estimate is unknown or the child failed (never raises for those).

    Example:
        >>> predict_batch_size(build, 1024, max_memory=0.5).batch_size
        344
    """
    if not callable(build):
        raise invalid_argument("build", build, "a function returning (model, data)")
    positive_int(batch_size, "batch_size")
    positive_int(min_batch_size, "min_batch_size")
    check_margin(safety_margin)
    host = _host_bound(max_memory)
    device = None if device_memory is None else parse_size(device_memory, name="device_memory")
    sizes = sample_sizes(batch_size)
    start = time.monotonic()

    def nothing(reason: str) -> BatchPrediction:
        return BatchPrediction(
            None, safety_margin=safety_margin, reason=reason, duration_s=time.monotonic() - start
        )

    try:
        figures = run_isolated(
            _predict_child,
            build,
            sizes,
            timeout=timeout,
            max_memory=max_memory,
            env=env,
            gpu_config=gpu_config,
            keep_warm=keep_warm,
            preload=preload,
        )
    except Exception as err:
        warn_once(
            f"batch-prediction-{type(err).__name__}",
            f"keras-memguard could not estimate the batch size's memory "
            f"({type(err).__name__}: {err}); searching by halving instead",
        )
        return nothing(f"the estimate's child failed: {type(err).__name__}: {err}")
    if figures["unknown"]:
        return nothing(figures["unknown"])
    where = figures["where"]
    if where == "device":
        total = figures.get("total")
        bound = (device or parse_size(1.0, name="device_memory")).resolve(total)
        intercept, slope = fit_line(tuple(zip(sizes, figures["device"], strict=True)))
    else:
        bound = host
        _, slope = fit_line(tuple(zip(sizes, figures["added"], strict=True)))
        intercept = figures["built"] + figures["measured"] - slope * sizes[0]
    if bound is None:
        name = "device_memory" if where == "device" else "max_memory"
        return nothing(f"the {where} memory's total is unknown; give {name} as bytes")
    picked = largest_batch(intercept, slope, bound, safety_margin, min_batch_size, batch_size)
    sampled = tuple((size, int(intercept + slope * size)) for size in sizes)
    prediction = BatchPrediction(
        picked,
        where,
        bound,
        safety_margin,
        intercept,
        slope,
        sampled,
        "",
        time.monotonic() - start,
    )
    if picked is None:
        peak = format_bytes(prediction.peak(min_batch_size))
        reason = f"even batch {min_batch_size} is predicted to need {peak}"
        return dataclasses.replace(prediction, reason=reason)
    return prediction
