"""The evidence :func:`~keras_memguard.guard.growth.classify` needs, gathered off the hot path.

:class:`GrowthProbe` runs only while the leak tracer traces (once growth is suspected,
or with ``trace_leaks=True``), at those epochs' ends, never per batch:

- a full collection at the baseline, and before the tracer's last sample a *measured*
  one: ``gc.DEBUG_SAVEALL`` keeps what it finds unreachable for a moment, so the probe
  can say what it was and where it was created, then a second collection frees it
  (``tracemalloc`` says how many bytes); what it freed accumulated over the traced epochs;
- the process's RSS before that collection and after the sample (so the probe's and
  the tracer's own allocations stay out of the growth), less ``tracemalloc``'s own, each
  read after ``malloc_trim(0)``: free pages glibc keeps (the tracer's snapshots, a
  step's temporaries) would otherwise be reused and hide growth, or be counted as it;
  the first trim says how much glibc held since the fit began;
- the framework's compilations (``backends/<framework>/introspect.py``) and device pools.

Example:
    >>> probe = GrowthProbe(floor=2 * MIB)
    >>> probe.after_sample(3)      # the tracer started at epoch 3
    >>> probe.before_sample(4); probe.after_sample(4)
    >>> probe.before_sample(5)
    >>> report = probe.finish(5, leak_report)
"""

from __future__ import annotations

import collections
import gc
import importlib
import itertools
import os
import sys
import time
import tracemalloc
from typing import Any

from keras_memguard.backends.base import (
    backend_name,
    current_backend,
    describe_tensor,
    tensor_types,
)
from keras_memguard.backends.compiles import CompileLog
from keras_memguard.errors import warn_once
from keras_memguard.guard import leaks
from keras_memguard.guard.growth import Compilations, Cycles, GrowthEvidence, GrowthReport, classify
from keras_memguard.guard.release import malloc_trim
from keras_memguard.probes import process

__all__ = ["CycleSample", "GrowthProbe", "collect_cycles", "compile_counter"]


class CycleSample:
    """What one measured full collection freed: bytes, by creation site, by type."""

    def __init__(self) -> None:
        self.freed = 0
        self.sites: collections.Counter[str] = collections.Counter()
        self.what: collections.Counter[str] = collections.Counter()
        self.what_bytes: collections.Counter[str] = collections.Counter()


def _garbage_size(
    obj: Any, tensors: tuple[type, ...], cache: dict[type, bool]
) -> tuple[str, int, bool]:
    """``(description, bytes, is_tensor)`` of a freed tensor or owning array, else 0 bytes."""
    if tensors and leaks._is_kind(type(obj), tensors, cache):
        return (*describe_tensor(obj), True)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray) and obj.base is None:  # owns its data
        dims = ",".join(str(d) for d in obj.shape)
        return f"{type(obj).__name__} {obj.dtype}[{dims}]", int(obj.nbytes), False
    return "", 0, False


def collect_cycles(
    tensors: tuple[type, ...] = (), cache: dict[type, bool] | None = None
) -> CycleSample:
    """A full ``gc.collect()`` that says what it freed (see the module docstring).

    Example:
        >>> a = []; a.append(a); del a
        >>> collect_cycles().freed >= 0
        True
    """
    cache = {} if cache is None else cache
    sample = CycleSample()
    tracing = tracemalloc.is_tracing()
    before = tracemalloc.get_traced_memory()[0] if tracing else 0
    kept = len(gc.garbage)  # the user's own uncollectable garbage stays where it is
    flags = gc.get_debug()
    gc.set_debug(flags | gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(flags)
    garbage = gc.garbage[kept:]
    del gc.garbage[kept:]
    counted = _describe_garbage(sample, garbage, tensors, cache, tracing) if garbage else 0
    if garbage:
        garbage.clear()
        gc.collect()  # now frees what the first collection kept
    host = before - tracemalloc.get_traced_memory()[0] if tracing else 0
    sample.freed = max(host, 0) + counted
    return sample


def _describe_garbage(
    sample: CycleSample,
    garbage: list[Any],
    tensors: tuple[type, ...],
    cache: dict[type, bool],
    tracing: bool,
) -> int:
    """Adds the garbage's tensors and arrays to ``sample`` by type and creation site.

    Returns the bytes ``tracemalloc`` does not count (tensors; arrays when not tracing).
    A function of its own, so that no local keeps an object alive after it returns.
    """
    counted = 0
    seen: set[int] = set()
    # NumPy arrays are not tracked by gc: they are found as what the garbage refers to
    for obj in itertools.chain(garbage, gc.get_referents(*garbage)):
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        what, size, is_tensor = _garbage_size(obj, tensors, cache)
        if not size:
            continue
        if is_tensor or not tracing:  # tracemalloc counts the arrays' buffers itself
            counted += size
        sample.what[what] += 1
        sample.what_bytes[what] += size
        raw = leaks._raw_object_traceback(obj) if tracing else None
        found = leaks._raw_site(raw) if raw else None
        if found is not None and found[1]:
            sample.sites[f"{found[0][0]}:{found[0][1]}"] += size
    return counted


def compile_counter() -> CompileLog | None:
    """The current framework's compile counter, or ``None`` where it exposes none."""
    try:
        module = importlib.import_module(f"keras_memguard.backends.{backend_name()}.introspect")
    except ImportError:
        return None
    counter: CompileLog | None = module.compile_counter()
    return counter


def current_rss() -> int | None:
    """This process's RSS (its children's memory is not this process's growth)."""
    try:
        return process._rss(os.getpid())
    except Exception:
        return None


def _trimmed_rss() -> tuple[int | None, int | None]:
    """RSS, then RSS after ``malloc_trim(0)``: pages glibc keeps free are not growth."""
    before = current_rss()
    trim = malloc_trim()
    if trim is None:
        return before, before
    trim(0)
    return before, current_rss()


def _device() -> tuple[int, int | None] | None:
    """The framework pools' live and reserved bytes over all devices, if reported."""
    figures = current_backend().device_memory()
    if not figures:
        return None
    reserved = [d.reserved for d in figures]
    held = None if any(r is None for r in reserved) else sum(r or 0 for r in reserved)
    return sum(d.allocated for d in figures), held


def _per_epoch(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class GrowthProbe:
    """Gathers :class:`GrowthEvidence` over the traced epochs; see the module docstring.

    Args:
        floor: the smallest growth per epoch worth naming (half the leak threshold in
            the guard).
        epochs: the epochs the tracer samples after its baseline; the measured
            collection runs before the last of them only. Defaults to `2`.

    Attributes:
        seconds: time spent in the probe since it was created (for benchmarks).
        trims_gave_back: bytes its ``malloc_trim(0)`` calls within a window returned to
            the system (not the first, at the window's start).
    """

    def __init__(self, floor: float, epochs: int = 2) -> None:
        self.floor = floor
        self.epochs = epochs
        self.seconds = 0.0
        self.trims_gave_back = 0  # bytes: free pages the window's trims returned (the
        # next epoch takes them again: not a drop the leak detector may count back)
        self.active = False
        self._reset()

    def _reset(self) -> None:
        self._counter: CompileLog | None = None
        self._compiled: list[int] = []
        self._growth: list[float] = []
        self._samples = 0  # traced epoch ends since the baseline
        self._cycles: CycleSample | None = None
        self._after: tuple[int | None, int] = (None, 0)  # RSS and tracemalloc's own bytes
        self._device_start: tuple[int, int | None] | None = None
        self._device_end: tuple[int, int | None] | None = None
        self._tensor_types: tuple[type, ...] = ()
        self._trimmed: int | None = None
        self._is_tensor: dict[type, bool] = {}

    def _trim(self) -> tuple[int | None, int | None]:
        """``_trimmed_rss()``, adding what the trim gave back to ``trims_gave_back``."""
        raw, trimmed = _trimmed_rss()
        if raw is not None and trimmed is not None:
            self.trims_gave_back += max(0, raw - trimmed)
        return raw, trimmed

    def _overhead(self) -> int:
        return tracemalloc.get_tracemalloc_memory() if tracemalloc.is_tracing() else 0

    def before_sample(self, epoch: int) -> None:
        """At a traced epoch's end, before the tracer samples: RSS, compilations and, before
        its last sample, the measured collection (cycle garbage made since the baseline is
        then gone from that sample, so it is never blamed on a site as well)."""
        if not self.active:
            return
        start = time.perf_counter()
        try:
            rss, overhead = self._trim()[1], self._overhead()
            last_rss, last_overhead = self._after
            if rss is not None and last_rss is not None:
                self._growth.append(rss - last_rss - (overhead - last_overhead))
            self._samples += 1
            if self._samples >= self.epochs:
                self._cycles = collect_cycles(self._tensor_types, self._is_tensor)
            if self._counter is not None:
                self._counter.poll()
                self._compiled.append(self._counter.count - sum(self._compiled))
            self._device_end = _device()
        except Exception as err:  # evidence is optional: training goes on
            self._fail(err)
        self.seconds += time.perf_counter() - start

    def after_sample(self, epoch: int) -> None:
        """After the tracer sampled (or started): RSS; on the first call, start counting."""
        start = time.perf_counter()
        try:
            if not self.active:
                self._reset()
                self.active = True
                self._tensor_types = tensor_types()
                gc.collect()  # older garbage: freed now, never counted as this window's
                # Not in trims_gave_back: this first trim returns what the process freed
                # before the window (a lasting drop, counted back like the collection).
                raw, trimmed = _trimmed_rss()
                if raw is not None and trimmed is not None:
                    self._trimmed = raw - trimmed  # what glibc kept free since the fit began
                self._counter = compile_counter()
                if self._counter is not None:
                    self._counter.start()
                self._device_start = _device()
            self._after = (self._trim()[1], self._overhead())
        except Exception as err:
            self._fail(err)
        self.seconds += time.perf_counter() - start

    def finish(self, epoch: int, report: leaks.LeakReport | None) -> GrowthReport | None:
        """The tracer reported: classifies what was gathered; ``None`` if nothing was."""
        if not self.active:
            return None
        start = time.perf_counter()
        try:
            return classify(self.evidence(report, epoch - self._samples, epoch))
        except Exception as err:
            self._fail(err)
            return None
        finally:
            self.close()
            self.seconds += time.perf_counter() - start

    def evidence(
        self, report: leaks.LeakReport | None, first_epoch: int, last_epoch: int
    ) -> GrowthEvidence:
        """What was gathered, as :class:`GrowthEvidence` (and one measured ``malloc_trim``)."""
        epochs = max(self._samples, 1)
        sites = report.sites if report is not None else ()
        cycles = None
        sample = self._cycles
        if sample is not None:  # what accumulated since the baseline's collection
            cycles = Cycles(
                sample.freed / epochs,
                tuple((where, size / epochs) for where, size in sample.sites.most_common(3)),
                tuple(f"{name} +{n / epochs:g}/epoch" for name, n in sample.what.most_common(3)),
            )
        compilations = None
        if self._counter is not None:
            compilations = Compilations(
                tuple(self._compiled),
                tuple(self._counter.functions.most_common(3)),
                tuple(self._counter.shapes),
                self._counter.source,
            )
        rss_growth = _per_epoch(self._growth) if self._growth else None
        allocated = reserved = None
        on_device = False
        if self._device_start is not None and self._device_end is not None:
            on_device = True
            allocated = (self._device_end[0] - self._device_start[0]) / epochs
            if self._device_start[1] is not None and self._device_end[1] is not None:
                reserved = (self._device_end[1] - self._device_start[1]) / epochs
        return GrowthEvidence(
            first_epoch=first_epoch,
            last_epoch=last_epoch,
            rss_growth=rss_growth,
            sites=tuple(sites),
            cycles=cycles,
            compilations=compilations,
            device_allocated_growth=allocated,
            device_reserved_growth=reserved,
            tensors_on_device=on_device,
            trimmed=self._trimmed,
            floor=self.floor,
        )

    def close(self) -> None:
        """Stops counting compilations; the probe is idle until the next trace."""
        if self._counter is not None:
            try:
                self._counter.stop()
            except Exception as err:
                self._fail(err)
        self.active = False
        self._reset()

    def _fail(self, err: Exception) -> None:
        warn_once("growth-probe", f"keras-memguard could not gather evidence of growth: {err}")
