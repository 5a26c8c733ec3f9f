"""Predicting the largest batch size that fits, from compile-only estimates.

The step's temporaries grow linearly with the batch size on all three backends (XLA's
buffer assignment under TensorFlow and JAX, a trace under fake tensors with PyTorch).
``predict_batch_size`` asks the estimate at two or three batch sizes in one child
process (``run_isolated``), fits the line, and picks the largest batch whose predicted
peak stays under the bound less a safety margin.

On the host the peak is the child's whole RSS, the quantity ``run_isolated``'s
``max_memory`` bounds: the RSS once the model and the optimizer are built, plus what a
real 3-step ``fit`` at a small batch added (this measures the runtime's own memory, which
the estimate cannot see), plus the line's growth from that small batch to ``b``::

    peak(b) = rss_built + measured_small + per_sample * (b - small)

On a GPU the peak is the estimate's known bytes on the device (variables, optimizer
state, gradients, the step's temporaries, the batch) at ``b``, against each device's
memory; the runtime's workspaces are left to the margin.

``find_batch_size`` confirms the pick in the same child (``predict_in_one_child``): the
child picks the batch itself (the bounds and the margin travel to it) and runs the
confirming real step there, so a search whose prediction fits costs one child, not two.
A step that fits its bound there fits in a fresh child too: that child still holds the
calibration fit's and the estimates' leftovers (compiled steps, allocator pools), which
a fresh child does not. The converse does not hold, so a confirmation that runs out of
memory there is tried once more in a fresh child before halving; the child writes its
figures to a file the parent named before it confirms, so a child stopped at
``max_memory`` or killed loses none of them.

Example:
    >>> def build():                       # module level: it runs in a child
    ...     model = make_model(); model.compile("adam", "mse")
    ...     return model, (keras.Input((32, 32, 3)), keras.Input((10,)))
    >>> prediction = predict_batch_size(build, 1024, max_memory="2GiB")
    >>> prediction.batch_size, prediction.per_sample
    (344, 4196352.0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from keras_memguard.errors import invalid_argument, positive_int, warn_once
from keras_memguard.isolation.batch_measure import fit_one_step, measure_figures
from keras_memguard.isolation.run import check_timeout, run_isolated
from keras_memguard.sizes import Size, format_bytes, parse_size

__all__ = [
    "DEFAULT_SAFETY_MARGIN",
    "ONE_STEP",
    "BatchPrediction",
    "ConfirmedPrediction",
    "check_margin",
    "decide",
    "fit_line",
    "largest_batch",
    "predict_batch_size",
    "predict_in_one_child",
    "sample_sizes",
]

DEFAULT_SAFETY_MARGIN = 0.25
CALIBRATION_BATCH_SIZE = 8
ONE_STEP = "one step of build's model"  # the confirmation when there is no train_fn


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
        sampled: ``(batch_size, predicted peak)`` at the line's points (estimated or
            measured).
        reason: why there is no prediction, or ``""``.
        line: how the line was obtained: the step estimate's method (``"compiled"``,
            ``"traced"``, ``"upper bound"`` on a device) or ``"measured"`` (two small
            real fits, on the host where the estimate would only be an upper bound).
        duration_s: seconds from the start of the estimate's child to its pick (a
            confirmation run in the same child not counted).
    """

    batch_size: int | None
    where: str = "host"
    bound: int | None = None
    safety_margin: float = DEFAULT_SAFETY_MARGIN
    fixed: float | None = None
    per_sample: float | None = None
    sampled: tuple[tuple[int, int], ...] = ()
    reason: str = ""
    line: str = ""
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
            f"{format_bytes(self.per_sample)} per sample ({self.line})"
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


def decide(
    figures: Mapping[str, Any],
    sizes: tuple[int, ...],
    host: int | None,
    device: Size | None,
    safety_margin: float,
    low: int,
    high: int,
) -> BatchPrediction:
    """The prediction from the child's ``figures`` (pure; ``duration_s`` left at 0).

    ``figures`` as ``measure_figures`` returns them: ``unknown`` (why there is no line, or
    ``""``), ``where``, ``line``, ``added`` and ``device`` (bytes at each of ``sizes``,
    or of ``figures["sizes"]`` where given), and on the host ``built`` and ``measured``,
    on a device ``total``. ``host`` is the host bound in bytes; ``device`` the device
    bound (``None``: the device's total).

    Example:
        >>> figures = {"unknown": "", "where": "host", "added": [800, 1600],
        ...            "device": [0, 0], "built": 10_000, "measured": 1_000}
        >>> decide(figures, (8, 16), 20_000, None, 0.25, 1, 64).batch_size
        64
    """
    if figures["unknown"]:
        return BatchPrediction(None, safety_margin=safety_margin, reason=figures["unknown"])
    where = figures["where"]
    sizes = tuple(figures.get("sizes", sizes))
    if where == "device":
        bound = (device or parse_size(1.0, name="device_memory")).resolve(figures.get("total"))
        intercept, slope = fit_line(tuple(zip(sizes, figures["device"], strict=True)))
    else:
        bound = host
        _, slope = fit_line(tuple(zip(sizes, figures["added"], strict=True)))
        intercept = figures["built"] + figures["measured"] - slope * sizes[0]
    if bound is None:
        name = "device_memory" if where == "device" else "max_memory"
        reason = f"the {where} memory's total is unknown; give {name} as bytes"
        return BatchPrediction(None, safety_margin=safety_margin, reason=reason)
    picked = largest_batch(intercept, slope, bound, safety_margin, low, high)
    sampled = tuple((size, int(intercept + slope * size)) for size in sizes)
    prediction = BatchPrediction(
        picked, where, bound, safety_margin, intercept, slope, sampled, line=figures.get("line", "")
    )
    if picked is None:
        peak = format_bytes(prediction.peak(low))
        reason = f"even batch {low} is predicted to need {peak}"
        return dataclasses.replace(prediction, reason=reason)
    return prediction


def _predict_child(
    build: Callable[[], Any],
    sizes: tuple[int, ...],
    bounds: tuple[int | None, Size | None, float, int, int],
    confirm: Callable[[int], Any] | str | None = None,
    saved: str | None = None,
) -> dict[str, Any]:
    """In the child: build, measure, estimate, pick; then confirm the pick here.

    Before the confirmation, the prediction and the time it was made are written to the
    file ``saved`` (written whole, then renamed), so that a confirmation the parent
    stops at ``max_memory`` or that the kernel kills loses none of the figures.
    """
    from keras_memguard.isolation.calibrate import unpack_build

    model, args, _ = unpack_build(build())
    prediction = decide(measure_figures(model, args, sizes, bounds[0]), sizes, *bounds)
    reply: dict[str, Any] = {"prediction": prediction, "estimated_at": time.time()}
    if confirm is None or saved is None or prediction.batch_size is None:
        return {**reply, "confirmed": False, "result": None}
    with contextlib.suppress(OSError):  # unwritable: the reply still carries the figures
        with open(f"{saved}.part", "wb") as file:
            pickle.dump((prediction, reply["estimated_at"]), file)
        os.replace(f"{saved}.part", saved)
    if callable(confirm):
        import keras

        del model, args  # train_fn builds its own model, as in a fresh child
        keras.backend.clear_session()
        result = confirm(prediction.batch_size)
    else:  # ONE_STEP: the model built above, one more step
        result = fit_one_step(model, args, prediction.batch_size)
    return {**reply, "confirmed": True, "result": result}


def _read_saved(path: str | None) -> tuple[BatchPrediction, float] | None:
    """What ``_predict_child`` saved before its confirmation, or ``None``."""
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            saved: tuple[BatchPrediction, float] = pickle.load(file)
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
    return saved


def _host_bound(max_memory: int | float | str | None) -> int | None:
    from keras_memguard.memory_snapshot import snapshot

    limit = snapshot(gpus=False).effective_limit
    if max_memory is None:
        return limit
    return parse_size(max_memory, name="max_memory").resolve(limit)


@dataclass(frozen=True)
class ConfirmedPrediction:
    """The prediction, and the confirmation run at its batch size in the same child.

    Attributes:
        prediction: the figures and the pick (``batch_size`` ``None``: no prediction).
        ran: whether a confirmation ran in the estimate's child (not when there was no
            pick, no ``confirm``, or the child failed before its pick).
        result: what the confirmation returned (``None`` if it failed or did not run).
        error: the confirmation's failure as ``run_isolated`` raised it (an OOM, the
            ``max_memory`` stop, a kill, the training function's own error), or ``None``.
        duration_s: seconds from the pick to the confirmation's end, as the parent saw.
    """

    prediction: BatchPrediction
    ran: bool = False
    result: Any = None
    error: BaseException | None = None
    duration_s: float = 0.0


def predict_in_one_child(
    build: Callable[[], Any],
    batch_size: int,
    confirm: Callable[[int], Any] | str | None = None,
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
) -> ConfirmedPrediction:
    """Predicts in one child and, given ``confirm``, confirms the pick in that child.

    ``confirm`` is a training function of the batch size, or ``ONE_STEP`` (one real step
    of the model ``build`` built, reused). Arguments are ``predict_batch_size``'s,
    checked by the caller; with ``confirm`` the child's timeout is twice ``timeout``
    (the estimate's and the confirmation's). Never raises for a failed child: a failure
    before the pick is the prediction's ``reason`` (with one warning), one after it is
    the ``error``, with the figures read back from the file the child wrote.

    Example:
        >>> confirmed = predict_in_one_child(build, 1024, train, max_memory="4GiB")
        >>> confirmed.prediction.batch_size, confirmed.error, confirmed.result
        (344, None, 0.42)
    """
    if not (confirm is None or confirm == ONE_STEP or callable(confirm)):
        raise invalid_argument("confirm", confirm, "a function of the batch size, ONE_STEP or None")
    host = _host_bound(max_memory)
    device = None if device_memory is None else parse_size(device_memory, name="device_memory")
    sizes = sample_sizes(batch_size)
    bounds = (host, device, safety_margin, min_batch_size, batch_size)
    timeout = check_timeout(timeout)
    if confirm is not None and timeout is not None:
        timeout = 2 * timeout
    started = time.time()  # wall time: the child's clock is compared with it
    saved = None
    if confirm is not None:
        try:
            handle, saved = tempfile.mkstemp(prefix="memguard-prediction-", suffix=".pickle")
            os.close(handle)
        except OSError:  # no file for the figures: the child predicts, a fresh one confirms
            saved = None
    error: Exception | None = None
    try:
        try:
            reply = run_isolated(
                _predict_child,
                build,
                sizes,
                bounds,
                confirm,
                saved,
                timeout=timeout,
                max_memory=max_memory,
                env=env,
                gpu_config=gpu_config,
                keep_warm=keep_warm,
                preload=preload,
            )
        except Exception as err:
            reply, error = None, err
        # No reply: the child failed, or its confirmation ended it (sys.exit(0)); the
        # figures are those it saved before confirming, if it got that far.
        if not isinstance(reply, dict):
            read = _read_saved(saved)
            if read is None:
                failure = error or RuntimeError("the estimate's child exited without its figures")
                return _no_prediction(failure, safety_margin, time.time() - started)
            reply = {"prediction": read[0], "estimated_at": read[1], "confirmed": True}
            reply["result"] = None
    finally:
        if saved is not None:
            for path in (saved, f"{saved}.part"):
                with contextlib.suppress(OSError):
                    os.remove(path)
    estimated_at = reply["estimated_at"]
    prediction = dataclasses.replace(
        reply["prediction"], duration_s=max(0.0, estimated_at - started)
    )
    if not reply["confirmed"]:
        return ConfirmedPrediction(prediction)
    return ConfirmedPrediction(
        prediction, True, reply["result"], error, max(0.0, time.time() - estimated_at)
    )


def _no_prediction(err: Exception, safety_margin: float, duration_s: float) -> ConfirmedPrediction:
    warn_once(
        f"batch-prediction-{type(err).__name__}",
        f"keras-memguard could not estimate the batch size's memory "
        f"({type(err).__name__}: {err}); searching by halving instead",
    )
    reason = f"the estimate's child failed: {type(err).__name__}: {err}"
    return ConfirmedPrediction(
        BatchPrediction(None, safety_margin=safety_margin, reason=reason, duration_s=duration_s)
    )


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
    return predict_in_one_child(
        build,
        batch_size,
        min_batch_size=min_batch_size,
        max_memory=max_memory,
        device_memory=device_memory,
        safety_margin=safety_margin,
        timeout=timeout,
        env=env,
        gpu_config=gpu_config,
        keep_warm=keep_warm,
        preload=preload,
    ).prediction
