"""Calibrating a fit's estimate with one real small step in a child process.

The estimate misses a gap that does not grow with the batch: the allocator's pools,
the runtime's workspaces and thread pools, what the first step initialises. A short real
``fit`` at a small batch size in a fresh child (``run_isolated``) measures it: the peak
RSS during that fit minus the RSS before it, against what the estimate predicted that
fit would add; the difference corrects the estimate at the batch size asked for.

``measure_fit_peak`` is that measurement, usable on its own in a fresh process (the
tests and ``benchmarks/bench_estimate.py`` compare estimates with it).

Example:
    >>> def build():                      # module level: it runs in the child
    ...     model = make_model(); model.compile("adam", "mse")
    ...     return model, (x_train, y_train), 256
    >>> estimate = calibrate_estimate(build, timeout=300)
    >>> estimate.known_bytes, estimate.calibrated_bytes   # raw and calibrated
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from keras_memguard.errors import invalid_argument, positive_int
from keras_memguard.estimate.fit import estimate_fit_memory, fit_added_bytes
from keras_memguard.estimate.parts import MemoryEstimate
from keras_memguard.isolation.run import run_isolated
from keras_memguard.probes.process import read_process_memory
from keras_memguard.sizes import format_bytes

__all__ = ["calibrate_estimate", "measure_fit_peak", "unpack_build"]

_CLEAR_REFS = "/proc/self/clear_refs"


def unpack_build(result: Any, name: str = "build") -> tuple[Any, tuple[Any, ...], int | None]:
    """``(model, data_args, batch_size)`` from ``(model, data)`` or ``(model, data, batch)``.

    ``data`` is ``x`` or a tuple ``(x, y)``.
    """
    forms = "(model, data) or (model, data, batch_size), data being x or (x, y)"
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise invalid_argument(name, result, f"a function returning {forms}")
    model, data = result[0], result[1]
    batch_size = result[2] if len(result) == 3 else None
    args = data if isinstance(data, tuple) and len(data) == 2 and _is_xy(data) else (data,)
    return model, args, batch_size


def _is_xy(data: tuple[Any, Any]) -> bool:
    """Whether a pair is ``(x, y)`` rather than one ``(batch_shape, dtype)`` spec."""
    from keras_memguard.estimate.specs import is_shape_spec

    return not is_shape_spec(data)


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss() -> int:
    memory = read_process_memory()
    return memory.rss if memory is not None else 0


class _Sampler(threading.Thread):
    """Samples RSS every few ms where the kernel's peak (VmHWM) cannot be reset."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, _rss())


def measure_fit_peak(model: Any, *args: Any, **fit_kwargs: Any) -> int:
    """Peak RSS during ``model.fit(*args, **fit_kwargs)`` minus RSS before it, in bytes.

    Resets the kernel's peak (``/proc/self/clear_refs``) where it can, else samples.
    Figures are clean only in a fresh process that has done nothing else of size.

    Example:
        >>> measure_fit_peak(model, x, y, batch_size=64, epochs=1, verbose=0)
        187695104
    """
    fit_kwargs.setdefault("verbose", 0)
    try:
        with open(_CLEAR_REFS, "w") as clear:
            clear.write("5")
        sampler = None
    except OSError:
        sampler = _Sampler()
    before = _rss()
    if sampler is not None:
        sampler.start()
    try:
        model.fit(*args, **fit_kwargs)
    finally:
        if sampler is not None:
            sampler.done.set()
            sampler.join()
    peak = sampler.peak if sampler is not None else (_vm_hwm() or _rss())
    return max(0, peak - before)


def _small_fit_args(args: tuple[Any, ...], batch_size: int, steps: int) -> tuple[Any, ...]:
    """The first ``steps`` batches of in-memory arrays; shapes become zeros; else as is."""
    import numpy as np
    from keras import tree

    from keras_memguard.estimate.specs import _leaves, fit_spec, is_shape_spec

    leaves = [leaf for arg in args for leaf in _leaves(arg)]  # a (shape, dtype) pair is one
    if leaves and all(is_shape_spec(leaf) for leaf in leaves):
        spec, _ = fit_spec(args[0], args[1] if len(args) > 1 else None, batch_size)
        count = batch_size * steps
        return tuple(
            tree.map_structure(lambda s: np.zeros((count, *s.shape), s.dtype), part)
            for part in spec
        )
    if leaves and all(hasattr(leaf, "shape") and hasattr(leaf, "__getitem__") for leaf in leaves):
        return tuple(tree.map_structure(lambda a: a[: batch_size * steps], arg) for arg in args)
    return args


def _calibration_child(
    build: Callable[[], Any], batch_size: int | None, small: int, steps: int
) -> tuple[MemoryEstimate, int, int, int]:
    """In the child: build, measure a small fit, then estimate at both batch sizes."""
    from keras_memguard.backends.step import build_for_fit
    from keras_memguard.estimate.specs import fit_spec

    model, args, built_size = unpack_build(build())
    size = batch_size or built_size
    spec, size = fit_spec(args[0], args[1] if len(args) > 1 else None, size, model=model)
    build_for_fit(model, spec)  # the optimizer's state is resident before fit, as in fit
    small = min(small, size)
    small_args = _small_fit_args(args, small, steps)
    in_memory = small_args is not args
    fit_kwargs: dict[str, Any] = {"epochs": 1}
    if in_memory:
        fit_kwargs["batch_size"] = small
    else:
        fit_kwargs["steps_per_epoch"] = steps
        small = size  # a pipeline runs at its own batch size
    measured = measure_fit_peak(model, *small_args, **fit_kwargs)
    raw = estimate_fit_memory(model, *args, batch_size=size)
    at_small = estimate_fit_memory(model, *small_args, batch_size=small)
    return raw, fit_added_bytes(at_small), measured, small


def calibrate_estimate(
    build: Callable[[], Any],
    *,
    batch_size: int | None = None,
    calibration_batch_size: int = 8,
    steps: int = 2,
    timeout: float | None = 600,
    max_memory: int | float | str | None = None,
    env: dict[str, str] | None = None,
) -> MemoryEstimate:
    """The estimate of ``build()``'s fit, raw and calibrated by a small real fit in a child.

    Args:
        build: a module-level function returning ``(model, data)`` or
            ``(model, data, batch_size)`` (``data`` is ``x`` or ``(x, y)``); it runs in
            the child.
        batch_size: the batch size to estimate for (else ``build``'s, else the data's).
            Defaults to `None`.
        calibration_batch_size: the batch size of the real small fit, for in-memory
            arrays and shapes (a pipeline runs at its own). Defaults to `8`.
        steps: how many real steps the small fit runs. Defaults to `2`.
        timeout: seconds before the child is stopped (``run_isolated``). Defaults to
            `600`.
        max_memory: bound on the child's memory (``run_isolated``). Defaults to `None`.
        env: environment variables for the child only. Defaults to `None`.

    Returns:
        The raw ``MemoryEstimate`` with ``calibrated_bytes`` set: its ``known_bytes``
        plus the gap the small fit measured; the gap is in ``notes``.

    Example:
        >>> estimate = calibrate_estimate(build, batch_size=256)
        >>> print(estimate)   # "predicted peak (host): 1.1 GiB, calibrated 1.3 GiB" ...
    """
    if not callable(build):
        raise invalid_argument("build", build, "a function returning (model, data[, batch_size])")
    positive_int(batch_size, "batch_size", allow_none=True)
    positive_int(calibration_batch_size, "calibration_batch_size")
    positive_int(steps, "steps")
    raw, predicted_small, measured_small, small = run_isolated(
        _calibration_child,
        build,
        batch_size,
        calibration_batch_size,
        steps,
        timeout=timeout,
        max_memory=max_memory,
        env=env,
    )
    gap = measured_small - predicted_small
    note = (
        f"calibrated by {steps} real steps at batch {small} in a child process: "
        f"measured {format_bytes(measured_small)} added by fit, predicted "
        f"{format_bytes(predicted_small)}; gap {format_bytes(gap)}"
    )
    return dataclasses.replace(
        raw, calibrated_bytes=max(0, raw.known_bytes + gap), notes=(*raw.notes, note)
    )
