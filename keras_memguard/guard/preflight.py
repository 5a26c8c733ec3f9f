"""The guard's pre-flight: before the first step, does this fit already not fit?

At ``on_train_begin`` the guard (``preflight="cheap"``, the default) adds up the parts
that cost next to nothing to count (variables, optimizer state, gradients, the input
pipeline's buffers: ``estimate.static`` and ``estimate.inputs``) and warns when the
memory they will *add* already crosses a bound or exceeds what is available:

    keras-memguard: this fit needs at least 6.9 GiB more than it holds now (shuffle
    buffer 12,000 x 588.0 KiB = 6.7 GiB); only 2.9 GiB are available in this container;
    lower the shuffle buffer (shuffle file names, or shuffle after batch) or use
    dataset_from_tfds.

Parts already in memory when ``fit`` starts (the weights, a built optimizer's slots,
the arrays passed to ``fit``, a ``from_tensor_slices`` source) are counted in the
estimate but not as memory still to come. ``preflight="full"`` adds the compiled
step's temporaries (``keras_memguard.estimate_fit_memory``, seconds, once per model and
input signature).

Keras passes callbacks no data, so ``fit_input`` reads it from ``fit``'s own frame: the
``epoch_iterator`` local every backend's ``fit`` builds before ``on_train_begin``, and
its ``data_adapter``. This is the one place that reads Keras internals for it; where
they change, the pre-flight counts the model's parts only and warns once.

``preflight_message`` (the decision) and ``predicted_peak`` are pure functions;
``run_preflight`` runs them for the guard and warns.

Example:
    >>> estimate = preflight_estimate(model, FitInput(dataset, None, None), "cheap")
    >>> preflight_message(estimate.parts, snapshot(), Bounds(), resident_parts(model))
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from keras_memguard.compat import keras as keras_compat
from keras_memguard.errors import MemGuardWarning, invalid_argument, warn_once
from keras_memguard.estimate import inputs as input_estimate
from keras_memguard.estimate.inputs import INPUT_ARRAYS
from keras_memguard.estimate.parts import EstimatePart, MemoryEstimate
from keras_memguard.estimate.static import (
    OPTIMIZER_STATE,
    RUNTIME_OVERHEAD,
    VARIABLES,
    model_parts,
)
from keras_memguard.estimate.step import STEP_PART
from keras_memguard.guard.policy import Bounds, available_floor
from keras_memguard.memory_snapshot import MemorySnapshot
from keras_memguard.sizes import format_bytes

__all__ = [
    "PREFLIGHT",
    "FitInput",
    "check_preflight_mode",
    "fit_input",
    "predicted_peak",
    "preflight_estimate",
    "preflight_message",
    "resident_parts",
    "run_preflight",
    "step_temporaries",
]

PREFLIGHT = ("cheap", "full", False)
_FRAMES = 12  # fit -> CallbackList.on_train_begin -> the guard: a few frames up

# What to do about the largest part still to come, by part name.
ADVICE = {
    "shuffle buffer": (
        "lower the shuffle buffer (shuffle file names, or shuffle after batch) or use "
        "dataset_from_tfds"
    ),
    "cache": "cache to a file (cache(filename)) or use dataset_from_tfds",
    "prefetch": "lower the prefetch depth",
    "parallel map": "lower num_parallel_calls",
    "parallel batch": "lower num_parallel_calls",
    "batch": "lower the batch size",
    "input batch": "lower the batch size",
    "pydataset queue": "lower the PyDataset's max_queue_size or workers",
    "loader queue": "lower the DataLoader's num_workers or prefetch_factor",
    "floatx copy": "pass float32 arrays (x.astype('float32')): Keras copies other floats",
    "tf.data copy": (
        "build a tf.data pipeline that reads from disk (or use dataset_from_tfds) instead "
        "of passing in-memory arrays"
    ),
    OPTIMIZER_STATE: "use an optimizer with fewer slots (SGD keeps 0-1 per weight, Adam 2)",
    "gradients": "train fewer weights (freeze layers) or use a smaller model",
    "step temporaries": "lower the batch size",
}


@dataclass(frozen=True)
class FitInput:
    """What ``fit`` trains on: ``x`` and ``y`` as given (``y`` None for a pipeline)."""

    x: Any
    y: Any = None
    batch_size: int | None = None


def check_preflight_mode(value: Any) -> str | bool:
    """``preflight`` as given, or the ``ValueError`` naming it."""
    if value is False or (isinstance(value, str) and value in PREFLIGHT):
        return value
    raise invalid_argument("preflight", value, "'cheap' (the default), 'full' or False")


def fit_input(model: Any) -> FitInput | None:
    """The data of the ``fit`` of ``model`` running now, from ``fit``'s frame; else None."""
    try:
        frame: Any = sys._getframe(1)
        for _ in range(_FRAMES):
            if frame is None:
                break
            local = frame.f_locals
            if frame.f_code.co_name == "fit" and local.get("self") is model:
                return FitInput(*keras_compat.fit_data(local))
            frame = frame.f_back
    except Exception as err:  # Keras's fit changed its locals
        warn_once(
            "preflight-data",
            f"keras-memguard's pre-flight cannot find this fit's data ({err!r}); it "
            "counts the model's memory only.",
        )
    return None


_cache: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
_CACHED_SIGNATURES = 8


def _full(model: Any, data: FitInput) -> MemoryEstimate | None:
    from keras_memguard import estimate as stage

    try:
        estimate_fit_memory: Any = getattr(stage, "estimate_fit_memory", None)
        if estimate_fit_memory is None:
            raise NotImplementedError("keras_memguard.estimate_fit_memory is not available")
        estimate: MemoryEstimate = estimate_fit_memory(
            model, data.x, y=data.y, batch_size=data.batch_size
        )
        return estimate
    except Exception as err:  # never kill the fit: fall back to the cheap parts
        warn_once(
            "preflight-full",
            f"keras-memguard's full pre-flight failed ({err!r}); it counts the cheap "
            "parts only (variables, optimizer state, gradients, input buffers).",
        )
        return None


def _input_parts(data: FitInput) -> tuple[EstimatePart, ...]:
    x = data.x if data.y is None else (data.x, data.y)
    return input_estimate.input_parts(x, batch_size=data.batch_size)


def _once(model: Any, key: Any, compute: Any) -> Any:
    """``compute()`` once per model and key (the last few keys are kept)."""
    try:
        cached = _cache.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        return compute()
    if key not in cached:
        if len(cached) >= _CACHED_SIGNATURES:
            cached.pop(next(iter(cached)))
        cached[key] = compute()
    return cached[key]


def preflight_estimate(model: Any, data: FitInput | None, mode: str) -> MemoryEstimate:
    """The estimate for ``mode`` (``"cheap"`` or ``"full"``) of a fit of ``model`` on ``data``.

    The input's parts (and a full estimate) are computed once per model and input
    signature (arrays: shapes and dtypes; a pipeline: the object); the model's parts are
    recounted only when its weights or optimizer change (``estimate.static``). Never
    raises: what cannot be counted is an unknown part.
    """
    if data is None:
        return MemoryEstimate(parts=model_parts(model))
    signature = (
        input_estimate.input_signature(data.x, data.batch_size),
        input_estimate.input_signature(data.y, None),
    )
    if mode == "full":
        full = _once(model, ("full", signature), lambda: _full(model, data))
        if full is not None:
            return full
    parts = model_parts(model) + _once(model, ("inputs", signature), lambda: _input_parts(data))
    return MemoryEstimate(parts=parts, batch_size=data.batch_size)


def resident_parts(model: Any) -> frozenset[str]:
    """Names of the parts already in memory when ``fit`` calls ``on_train_begin``.

    The runtime's first-fit memory counts as held: after a process's first fit it is,
    and the guard cannot tell a first fit from a later one.
    """
    names = {VARIABLES, INPUT_ARRAYS, "dataset tensors", RUNTIME_OVERHEAD}
    optimizer = getattr(model, "optimizer", None)
    if getattr(getattr(optimizer, "inner_optimizer", optimizer), "built", False):
        names.add(OPTIMIZER_STATE)
    return frozenset(names)


def _to_come(parts: Collection[EstimatePart], resident: Collection[str], where: str) -> int:
    return sum(
        part.bytes or 0 for part in parts if part.where == where and part.name not in resident
    )


def predicted_peak(
    parts: Collection[EstimatePart], snap: MemorySnapshot, resident: Collection[str]
) -> int | None:
    """The process tree's predicted peak: what it holds now plus the host parts to come.

    A lower bound where a part is unknown. ``None`` if the process tree is unread.
    """
    if snap.process_tree is None:
        return None
    return snap.process_tree + _to_come(parts, resident, "host")


def step_temporaries(estimate: MemoryEstimate | None) -> int | None:
    """The compiled training step's temporaries in bytes, where the estimate knows them.

    ``preflight="full"`` computes them (JAX: XLA's buffer assignment); ``"cheap"`` does
    not. The guard adds them to a non-resettable allocator's live bytes to bound a step's
    peak (``policy.gpu_peaks_since_check``).

    Example:
        >>> step_temporaries(guard.estimate)  # after a fit with preflight="full"
        1181116006
    """
    part = None if estimate is None else estimate.part(STEP_PART)
    return None if part is None else part.bytes


def _largest(
    parts: Collection[EstimatePart], resident: Collection[str], where: str
) -> EstimatePart | None:
    candidates = [p for p in parts if p.where == where and p.name not in resident and p.bytes]
    return max(candidates, key=lambda part: part.bytes or 0, default=None)


def _host_problem(need: int, snap: MemorySnapshot, bounds: Bounds) -> str | None:
    """Why ``need`` more bytes of host memory cannot fit now, or ``None``.

    A bound crossed already is the guard's checks' to report, not the pre-flight's.
    """
    available, tree = snap.effective_available, snap.process_tree
    in_container = snap.container_limit is not None and (
        snap.system_total is None or snap.container_limit < snap.system_total
    )
    where = "in this container" if in_container else "on this machine"
    if available is not None and need > available:
        return f"only {format_bytes(available)} are available {where}"
    bound = bounds.max_process_memory
    limit = bound.resolve(snap.effective_limit) if bound is not None else None
    if limit is not None and tree is not None and tree <= limit < tree + need:
        return (
            f"the process holds {format_bytes(tree)} already, and max_process_memory is "
            f"{format_bytes(limit)}"
        )
    floor = available_floor(bounds, snap)
    if floor is not None and available is not None and available >= floor[1] > available - need:
        return (
            f"{format_bytes(available)} are available {where}, which would leave less "
            f"than {floor[0]}={format_bytes(floor[1])}"
        )
    return None


def _device_problem(need: int, snap: MemorySnapshot, bounds: Bounds) -> str | None:
    """Why ``need`` more bytes on each GPU cannot fit, or ``None``.

    Compared with what the framework's allocator holds (not NVML's figure: JAX and
    TensorFlow reserve pools far larger than their arrays) and ``max_gpu_memory``, else
    the GPU's total.
    """
    size = bounds.max_gpu_memory
    for gpu in snap.gpus:
        limit = size.resolve(gpu.total) if size is not None else gpu.total
        held = gpu.allocated if gpu.allocated is not None else gpu.process_used
        if limit is not None and held is not None and held <= limit < held + need:
            name = "max_gpu_memory" if size is not None else "its total"
            return (
                f"GPU {gpu.index} holds {format_bytes(held)} already, and {name} is "
                f"{format_bytes(limit)}"
            )
    return None


def preflight_message(
    parts: Collection[EstimatePart],
    snap: MemorySnapshot,
    bounds: Bounds,
    resident: Collection[str],
) -> str | None:
    """The warning when the memory still to come cannot fit; else ``None``.

    Host parts are checked against what is available now, ``max_process_memory``
    (the process tree plus what is to come) and the floor on available memory
    (``min_available_memory``, else ``emergency_available_memory``); device parts
    against each GPU's ``max_gpu_memory`` (else its total) less what its allocator holds.

    Example:
        >>> preflight_message(estimate.parts, snapshot(), guard.bounds, resident_parts(model))
        'keras-memguard: this fit needs at least 6.8 GiB more than it holds now (...)'
    """
    for where, check in (("host", _host_problem), ("device", _device_problem)):
        need = _to_come(parts, resident, where)
        problem = check(need, snap, bounds) if need > 0 else None
        if problem is not None:
            break
    else:
        return None
    # a lower bound while a part is unknown, or the step's own memory is not counted
    unknown = any(part.bytes is None for part in parts) or all(p.name != STEP_PART for p in parts)
    memory = "" if where == "host" else " GPU memory"
    line = f"keras-memguard: this fit needs {'at least ' if unknown else ''}"
    line += f"{format_bytes(need)} more{memory} than it holds now"
    top = _largest(parts, resident, where)
    if top is not None:
        count = top.detail.split(";")[0]  # "12,000 x 588.0 KiB", where the part has one
        count = f" {count} =" if " x " in count and count[:1].isdigit() else ":"
        line += f" ({top.name}{count} {format_bytes(top.bytes)})"
    line += f"; {problem}"
    advice = ADVICE.get(top.name) if top is not None else None
    return line + (f"; {advice}." if advice else ".")


def run_preflight(
    model: Any, mode: str | bool, snap: MemorySnapshot, bounds: Bounds
) -> tuple[MemoryEstimate | None, int | None]:
    """The guard's pre-flight: ``(estimate, predicted peak)``; warns if the fit won't fit.

    ``(None, None)`` with ``mode=False``. A failure warns once and never raises (an
    estimate must never stop training); the estimate is then ``None`` unless it was
    made before the failure.

    Example:
        >>> estimate, peak = run_preflight(model, "cheap", snapshot(), guard.bounds)
    """
    if mode is False:
        return None, None
    estimate = None
    try:
        data = fit_input(model)
        estimate = preflight_estimate(model, data, str(mode))
        resident = resident_parts(model)
        peak = predicted_peak(estimate.parts, snap, resident)
        message = preflight_message(estimate.parts, snap, bounds, resident)
    except Exception as err:  # an estimate must never stop training
        warn_once("preflight", f"keras-memguard's pre-flight failed: {err!r}")
        return estimate, None
    if message is not None:
        warnings.warn(message, MemGuardWarning, stacklevel=3)
    return estimate, peak
