"""Calibrating a fit's estimate with two short real fits in child processes.

The estimate misses a part that does not grow with the batch (the allocator's pools,
the runtime's thread pools, what the first step initialises and keeps: measured 16-50
MiB on CPU) and a part that does (scratch the framework allocates outside what its
compiler or tracer sees, such as the patches of CPU convolutions: measured 20-50% of
the step's per-sample memory). Two short real ``fit``s at two small batch sizes, each
in a fresh child (``run_isolated``), measure both: the peak RSS during the fit minus the
RSS before it, against what the estimate predicted that fit would add. The two gaps give
a line (a constant and a slope per sample) that corrects the estimate at the batch size
asked for, or one constant (their mean) where the larger fit measured no more than the
smaller: a peak that falls with the batch is the first fit's own memory varying between
fresh processes (under JAX on CPU one fit read 57-87 MiB in ten), not a line.

Each point is a fresh process's first fit, not a second fit in the same child: measured
under JAX on CPU, a second fit's peak above the RSS once built read 87-125 MiB where fresh
children read 73-94 (the first fit's leftovers and the second compile do not overlap).

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

__all__ = [
    "CALIBRATION_STEPS",
    "calibrate_estimate",
    "calibration_sizes",
    "gap_line",
    "measure_fit_peak",
    "small_fit_args",
    "unpack_build",
]

_CLEAR_REFS = "/proc/self/clear_refs"
# Real steps per small fit: on CPU the peak still grows over a fit's first steps (under
# JAX about 6 MiB a step on a 6M-parameter model: glibc's mmap threshold rises as the
# step's buffers are freed, and later ones come from a growing heap), so the small fits
# run as many steps as the reference the estimate is judged against (3, in
# ``tests/estimate_models.py`` and ``benchmarks/bench_estimate.py``).
CALIBRATION_STEPS = 3


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


def small_fit_args(args: tuple[Any, ...], batch_size: int, steps: int) -> tuple[Any, ...]:
    """The first ``steps`` batches of in-memory arrays; shapes become zeros; else as is."""
    import numpy as np
    from keras import tree

    from keras_memguard.estimate.specs import fit_spec, is_shape_spec, spec_leaves

    leaves = [leaf for arg in args for leaf in spec_leaves(arg)]  # a (shape, dtype) pair is one
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
    small_args = small_fit_args(args, small, steps)
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


def calibration_sizes(size: int, smallest: int) -> tuple[int, ...]:
    """The two small batch sizes calibration measures for a fit at ``size``.

    The smallest, and half of ``size`` (at least 4x the smallest, at most ``size``): the
    first fit's own memory varies by a few MiB from one process to the next (measured
    under JAX: 38-44 MiB for a tiny model), and the line through the two gaps is read at
    ``size``, so the further apart the two, the less that noise moves the slope.

    Example:
        >>> calibration_sizes(256, 8), calibration_sizes(32, 8), calibration_sizes(8, 8)
        ((8, 128), (8, 32), (8,))
    """
    small = min(smallest, size)
    larger = min(size, max(4 * small, size // 2))
    return (small,) if larger <= small else (small, larger)


def gap_line(
    points: list[tuple[int, int]], measured: list[int] | None = None
) -> tuple[float, float]:
    """``(constant, per_sample)`` of the line through ``(batch_size, gap)`` points.

    One point gives a constant gap; two give the line through both, or their mean as a
    constant where the ``measured`` peaks at the two points do not grow with the batch
    (a larger batch never needs less: the fall is noise between processes, which the
    line would multiply where it is read beyond the points).

    Example:
        >>> gap_line([(8, 50), (64, 106)]), gap_line([(8, 50), (64, 30)], [90, 80])
        ((42.0, 1.0), (40.0, 0.0))
    """
    (b1, g1), *rest = points
    if not rest:
        return float(g1), 0.0
    b2, g2 = rest[0]
    if measured is not None and (measured[1] - measured[0]) * (b2 - b1) <= 0:
        return (g1 + g2) / 2, 0.0
    slope = (g2 - g1) / (b2 - b1)
    return g1 - slope * b1, slope


def calibrate_estimate(
    build: Callable[[], Any],
    *,
    batch_size: int | None = None,
    calibration_batch_size: int = 8,
    steps: int = CALIBRATION_STEPS,
    timeout: float | None = 600,
    max_memory: int | float | str | None = None,
    env: dict[str, str] | None = None,
) -> MemoryEstimate:
    """The estimate of ``build()``'s fit, raw and calibrated by two small real fits.

    Each small fit runs ``steps`` steps in its own fresh child, at
    ``calibration_sizes(batch_size, calibration_batch_size)`` (for a fit at 256 with
    the defaults: 8 and 128); the gaps between measured and predicted give a constant
    and a per-sample correction, or only a constant (their mean) where the larger fit
    measured no more than the smaller. A pipeline runs at its own batch size: one fit,
    a constant gap.

    Args:
        build: a module-level function returning ``(model, data)`` or
            ``(model, data, batch_size)`` (``data`` is ``x`` or ``(x, y)``); it runs in
            the children.
        batch_size: the batch size to estimate for (else ``build``'s, else the data's).
            Defaults to `None`.
        calibration_batch_size: the smaller batch size of the real small fits, for
            in-memory arrays and shapes. Defaults to `8`.
        steps: how many real steps each small fit runs (the peak still grows over the
            first few). Defaults to `3`.
        timeout: seconds before a child is stopped (``run_isolated``). Defaults to
            `600`.
        max_memory: bound on each child's memory (``run_isolated``). Defaults to `None`.
        env: environment variables for the children only. Defaults to `None`.

    Returns:
        The raw ``MemoryEstimate`` with ``calibrated_bytes`` set: its ``known_bytes``
        plus the gap the small fits measured, at its batch size; how is in ``notes``.

    Example:
        >>> estimate = calibrate_estimate(build, batch_size=256)
        >>> print(estimate)   # "predicted peak (host): 1.1 GiB, calibrated 1.3 GiB" ...
    """
    if not callable(build):
        raise invalid_argument("build", build, "a function returning (model, data[, batch_size])")
    positive_int(batch_size, "batch_size", allow_none=True)
    positive_int(calibration_batch_size, "calibration_batch_size")
    positive_int(steps, "steps")
    points: list[tuple[int, int]] = []
    peaks: list[int] = []
    sizes: tuple[int, ...] = (calibration_batch_size,)
    raw: MemoryEstimate | None = None
    measures = []
    while len(points) < len(sizes):
        raw, predicted, measured, small = run_isolated(
            _calibration_child,
            build,
            batch_size,
            sizes[len(points)],
            steps,
            timeout=timeout,
            max_memory=max_memory,
            env=env,
        )
        if not points and raw.batch_size is not None and small == sizes[0]:
            sizes = calibration_sizes(raw.batch_size, small)
        points.append((small, measured - predicted))
        peaks.append(measured)
        measures.append(
            f"at batch {small}: measured {format_bytes(measured)} added by fit, "
            f"predicted {format_bytes(predicted)}"
        )
    assert raw is not None
    constant, per_sample = gap_line(points, peaks)
    gap = int(constant + per_sample * (raw.batch_size or points[0][0]))
    if len(points) > 1 and per_sample == 0.0:
        line = (
            f"the larger fit measured no more (noise between processes): the gaps' mean, "
            f"{format_bytes(gap)}, at batch {raw.batch_size}"
        )
    else:
        line = (
            f"gap {format_bytes(int(constant))} + {format_bytes(int(per_sample))} per "
            f"sample = {format_bytes(gap)} at batch {raw.batch_size}"
        )
    note = (
        f"calibrated by {steps} real steps in a fresh child per batch size "
        f"({'; '.join(measures)}); {line}"
    )
    return dataclasses.replace(
        raw, calibrated_bytes=max(0, raw.known_bytes + gap), notes=(*raw.notes, note)
    )
