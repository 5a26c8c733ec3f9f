"""``find_batch_size``: retry training with smaller batches until memory suffices.

HuggingFace accelerate's ``find_executable_batch_size`` does this for PyTorch; this is
the Keras version. Each attempt runs in its own process (:func:`run_isolated`), so a
failed attempt leaves nothing behind: no half-grown allocator pool, no traced graphs.
An attempt counts as "out of memory" when it raises an error the Keras backend's adapter
recognises as an OOM (``tf.errors.ResourceExhaustedError``, JAX's and PyTorch's
out-of-memory errors, ``MemoryError``) or the guard's ``MemoryLimitExceededError``,
crosses ``max_memory``, is killed by SIGKILL (the OOM killer), or is ended by the guard's
watchdog (exit code ``WATCHDOG_EXIT_CODE``: memory about to run out while training
waited). Any other failure is re-raised at once.

Example:
    >>> def train(batch_size):           # at module level
    ...     model = build(); model.fit(data.batch(batch_size), epochs=1)
    ...     return model.evaluate(test)
    >>> found = find_batch_size(train, 512, max_memory="12GiB")
    >>> found.batch_size, found.result

Given ``build`` (the model and its input's shapes), it predicts first
(``batch_predict.py``): compile-only estimates at two batch sizes give the line, and the
largest batch under the bound is confirmed by one attempt in the estimate's own child
(one child in all when it fits). If that attempt runs out of memory, one more runs at
the same size in a fresh child; the halving search is the fallback when the estimate is
unknown or the confirmation runs out of memory in the fresh child too.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keras_memguard.backends.base import NullBackend, current_backend
from keras_memguard.errors import (
    MemGuardError,
    MemoryLimitExceededError,
    invalid_argument,
    positive_int,
)
from keras_memguard.isolation.batch_measure import one_step
from keras_memguard.isolation.batch_predict import (
    DEFAULT_SAFETY_MARGIN,
    ONE_STEP,
    BatchPrediction,
    ConfirmedPrediction,
    check_margin,
    predict_in_one_child,
)
from keras_memguard.isolation.run import (
    ChildFailedError,
    ChildKilledError,
    ChildMemoryLimitError,
    ChildSystemExit,
    check_timeout,
    run_isolated,
)
from keras_memguard.sizes import parse_size

__all__ = ["Attempt", "BatchSizeResult", "BatchSizeSearchError", "find_batch_size"]


@dataclass(frozen=True)
class Attempt:
    """One try: the batch size, its outcome, what happened and how long it took.

    ``outcome`` is ``"ok"``, ``"out of memory"``, or ``"failed"`` (another error, only
    for a confirmation in the estimate's child: it is tried again in a fresh child,
    where any error other than an OOM is raised). ``detail`` starts with
    ``"in the estimate's child"`` for the confirmation run there.
    """

    batch_size: int
    outcome: str
    detail: str
    duration_s: float


PREDICTED = "predicted and confirmed"
SEARCHED = "searched"
IN_ESTIMATE_CHILD = "in the estimate's child"


@dataclass(frozen=True)
class BatchSizeResult:
    """The batch size that worked, what the training function returned, and every try.

    ``how`` is ``"predicted and confirmed"`` (the prediction's batch size ran: in the
    estimate's child, or else in a fresh one) or ``"searched"`` (by halving: no
    ``build``, no prediction, or both confirmations ran out of memory); ``prediction``
    holds the figures, or why there are none (``None`` without ``build``).
    """

    batch_size: int
    result: Any
    attempts: tuple[Attempt, ...] = field(default=())
    how: str = SEARCHED
    prediction: BatchPrediction | None = None


class BatchSizeSearchError(MemGuardError):
    """Even the smallest allowed batch size ran out of memory (or tries ran out)."""

    def __init__(self, message: str, attempts: tuple[Attempt, ...]) -> None:
        super().__init__(message)
        self.attempts = attempts


def is_out_of_memory(err: BaseException, backend: str | None = None) -> bool:
    """Whether a ``run_isolated`` failure means "out of memory" for ``backend``
    (default: the Keras backend in use).

    Example:
        >>> is_out_of_memory(MemoryError())
        True
    """
    if isinstance(err, (ChildMemoryLimitError, MemoryLimitExceededError, MemoryError)):
        return True
    if isinstance(err, ChildSystemExit):
        return False
    if isinstance(err, ChildKilledError):
        ended = err.exit
        return ended is not None and (
            ended.oom_killed or ended.signal == "SIGKILL" or ended.ended_by_watchdog
        )
    if isinstance(err, ChildFailedError):
        type_name, error = err.type_name, None
    else:
        type_name, error = f"{type(err).__module__}.{type(err).__qualname__}", err
    if type_name.rsplit(".", 1)[-1] == "MemoryLimitExceededError":
        return True
    try:
        adapter: Any = current_backend(backend)
    except ImportError:  # an adapter this installation lacks
        adapter = NullBackend(backend or "unknown")
    return bool(adapter.is_out_of_memory(error, type_name, str(err)))


def _attempt(
    train_fn: Callable[..., Any], size: int, backend: str | None, options: dict[str, Any]
) -> tuple[Attempt, Any]:
    """Runs ``train_fn(size)`` isolated: its ``Attempt`` and result (``None`` on an OOM)."""
    start = time.monotonic()
    try:
        result = run_isolated(train_fn, size, **options)
    except Exception as err:
        if not is_out_of_memory(err, backend):
            raise
        detail = f"{type(err).__name__}: {err}"
        return Attempt(size, "out of memory", detail, time.monotonic() - start), None
    return Attempt(size, "ok", "", time.monotonic() - start), result


def _in_child_attempt(confirmed: ConfirmedPrediction, backend: str | None) -> Attempt:
    """The confirmation run in the estimate's child, as an ``Attempt``."""
    size = confirmed.prediction.batch_size or 0
    err = confirmed.error
    if err is None:
        return Attempt(size, "ok", IN_ESTIMATE_CHILD, confirmed.duration_s)
    outcome = "out of memory" if is_out_of_memory(err, backend) else "failed"
    detail = f"{IN_ESTIMATE_CHILD}: {type(err).__name__}: {err}"
    return Attempt(size, outcome, detail, confirmed.duration_s)


def find_batch_size(
    train_fn: Callable[..., Any] | None,
    batch_size: int,
    *,
    build: Callable[[], Any] | None = None,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
    device_memory: int | float | str | None = None,
    factor: float = 0.5,
    min_batch_size: int = 1,
    max_attempts: int = 8,
    timeout: float | None = None,
    max_memory: int | float | str | None = None,
    env: Mapping[str, str] | None = None,
    gpu_config: Mapping[str, Any] | None = None,
    keep_warm: bool = False,
    preload: tuple[str, ...] | None = None,
) -> BatchSizeResult:
    """Calls ``train_fn(batch_size)`` in a fresh process, shrinking the batch on OOM.

    With ``build``, the batch size is predicted first (as ``predict_batch_size`` does):
    the estimate at two batch sizes in one child, the line through them, the largest
    batch under the bound keeping ``safety_margin`` of the room free, then one attempt
    at it in the same child (which still holds the estimate's leftovers: what fits
    there fits in a fresh child). If it runs out of memory there, one attempt at that
    size in a fresh child; if that runs out of memory too, or the estimate is unknown,
    the halving search runs (from the next size down).

    Args:
        train_fn: a module-level function taking the batch size; its return value
            (picklable) becomes `result`. `None` with `build`: each attempt is one
            real step of `build()`'s model.
        batch_size: the first (largest) batch size to try.
        build: a module-level function returning `(model, data)`, `data` being `x` or
            `(x, y)` as arrays or shapes (`keras.Input((32, 32, 3))`,
            `((None, 32, 32, 3), "float32")`), the model compiled as `train_fn`
            compiles it. Defaults to `None` (halving only).
        safety_margin: the fraction of the room above the fixed memory (the bound less
            the predicted peak at batch 0) the prediction keeps free. Defaults to `0.25`.
        device_memory: on a GPU, the bound the prediction uses for one device: bytes or
            a fraction of its total. Defaults to `None` (its total).
        factor: each retry multiplies the batch size by this, in (0, 1). Defaults to `0.5`.
        min_batch_size: the smallest batch size to try. Defaults to `1`.
        max_attempts: how many tries in fresh children at most (the confirmation in
            the estimate's child is not counted). Defaults to `8`.
        timeout: passed to `run_isolated` for each attempt; the estimate's child,
            which also runs the first attempt, gets twice as long. Defaults to `None`.
        max_memory: passed to `run_isolated` for each attempt; on the host, the bound
            the prediction uses (default: the effective limit). Defaults to `None`.
        env: passed to `run_isolated` for each attempt. Defaults to `None`.
        gpu_config: passed to `run_isolated` for each attempt. Defaults to `None`.
        keep_warm: the next attempt's process starts (and imports `preload`, by
            default the backend's framework) while the current one (or the estimate)
            runs, so a retry skips the start-up; call `shutdown_spares()` when done (the
            spare also ends at exit). Defaults to `False`.
        preload: passed to `run_isolated` for each attempt. Defaults to `None`.

    Returns:
        A :class:`BatchSizeResult` with the batch size that worked, the attempts' log,
        how it was found and the prediction's figures.

    Raises:
        BatchSizeSearchError: no batch size down to `min_batch_size` fit.
        ValueError: an argument is out of range (named).
        Exception: a failure that is not about memory, at once in a fresh child (one
            in the estimate's child, which holds the estimate's leftovers, is tried
            again in a fresh child first).

    Example:
        >>> find_batch_size(train, 256, min_batch_size=8).batch_size
        64
        >>> found = find_batch_size(train, 1024, build=build, max_memory="4GiB")
        >>> found.how, found.batch_size, found.prediction.per_sample
        ('predicted and confirmed', 344, 4196352.0)
    """
    positive_int(batch_size, "batch_size")
    positive_int(min_batch_size, "min_batch_size")
    positive_int(max_attempts, "max_attempts")
    if min_batch_size > batch_size:
        raise invalid_argument(
            "min_batch_size", min_batch_size, f"an int <= batch_size ({batch_size})"
        )
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < 1:
        raise invalid_argument("factor", factor, "a number between 0 and 1, such as 0.5")
    if build is not None and not callable(build):
        raise invalid_argument("build", build, "a function returning (model, data), or None")
    confirm = ONE_STEP if train_fn is None else train_fn  # in the estimate's child
    if train_fn is None and build is not None:
        train_fn = functools.partial(one_step, build)
    if not callable(train_fn):
        raise invalid_argument("train_fn", train_fn, "a function of the batch size (or build)")
    check_margin(safety_margin)
    check_timeout(timeout)
    for name, size_arg in (("max_memory", max_memory), ("device_memory", device_memory)):
        if size_arg is not None:
            parse_size(size_arg, name=name)
    run = train_fn
    backend = (env or {}).get("KERAS_BACKEND")
    options = {
        "timeout": timeout,
        "max_memory": max_memory,
        "env": env,
        "gpu_config": gpu_config,
        "keep_warm": keep_warm,
        "preload": preload,
    }

    attempts: list[Attempt] = []
    in_child = 0  # the confirmation in the estimate's child is not one of max_attempts
    size = batch_size
    prediction = None
    if build is not None:
        confirmed = predict_in_one_child(
            build,
            batch_size,
            confirm,
            min_batch_size=min_batch_size,
            max_memory=max_memory,
            device_memory=device_memory,
            safety_margin=safety_margin,
            timeout=timeout,
            env=env,
            gpu_config=gpu_config,
            keep_warm=keep_warm,
            preload=preload,
        )
        prediction = confirmed.prediction
        picked = prediction.batch_size
        if confirmed.ran:
            in_child = 1
            attempts.append(_in_child_attempt(confirmed, backend))
            if attempts[-1].outcome == "ok":
                return BatchSizeResult(
                    attempts[-1].batch_size,
                    confirmed.result,
                    tuple(attempts),
                    PREDICTED,
                    prediction,
                )
        if picked is not None and len(attempts) - in_child < max_attempts:
            attempt, result = _attempt(run, picked, backend, options)
            attempts.append(attempt)
            if attempt.outcome == "ok":
                return BatchSizeResult(picked, result, tuple(attempts), PREDICTED, prediction)
        if picked is not None:
            size = max(min_batch_size, int(picked * factor))
            if picked <= min_batch_size:
                size = 0
    while size > 0 and len(attempts) - in_child < max_attempts:
        attempt, result = _attempt(run, size, backend, options)
        attempts.append(attempt)
        if attempt.outcome == "ok":
            return BatchSizeResult(size, result, tuple(attempts), SEARCHED, prediction)
        if size <= min_batch_size:
            break
        size = max(min_batch_size, int(size * factor))
    tried = ", ".join(str(a.batch_size) for a in attempts)
    raise BatchSizeSearchError(
        f"find_batch_size: every batch size tried ran out of memory ({tried}); lower "
        "min_batch_size, raise max_memory, or make the model smaller.",
        tuple(attempts),
    )
