"""Leak forensics: which line of the user's code holds on to the memory that grows.

When growth is suspected (or asked for), :class:`LeakTracer` starts ``tracemalloc`` and,
at each following epoch end, samples what is alive that was allocated since: host
allocations (``tracemalloc``: Python objects and NumPy buffers) and the framework's
tensors found through ``gc`` (TensorFlow eager tensors and variables, JAX arrays, PyTorch
tensors: their buffers live in the framework's allocator, which ``tracemalloc`` does not
see, so their bytes come from their shape and dtype). Everything is grouped by *site*: the
innermost frame of the allocation's traceback outside the standard library, the
frameworks, NumPy and this package. A site is reported only if what it holds grew in
*every* traced epoch, by at least ``min_bytes_per_epoch`` on average, so one-off warm-up
growth (tracing, compilation caches) and steady state are never blamed. Tracing stops
after the report.

Example:
    >>> tracer = LeakTracer(True, warmup_epochs=1)
    >>> for epoch in range(6):
    ...     held.append(np.ones(2**18))            # the user's leak, 2 MiB per epoch
    ...     report = tracer.epoch_end(epoch, suspected=False)
    ...     if report is not None:
    ...         print(report.sites[0].location)
    leaky.py:3
"""

from __future__ import annotations

import collections
import gc
import itertools
import linecache
import os
import sys
import tracemalloc
from dataclasses import dataclass, field, replace
from typing import Any

from keras_memguard.backends.base import describe_tensor, tensor_types
from keras_memguard.errors import warn_once
from keras_memguard.guard.frames import (
    LIBRARY_PACKAGES,
    function_at,
    is_library_file,
    object_traceback,
    user_frame,
)
from keras_memguard.sizes import format_bytes

__all__ = [
    "LIBRARY_PACKAGES",
    "LeakReport",
    "LeakSite",
    "LeakTracer",
    "is_library_file",
    "object_traceback",
    "user_frame",
]

TRACE_FRAMES = 64  # deep enough to reach a user frame below Keras's model building
MIN_BYTES_PER_EPOCH = 256 * 1024
TOP_SITES = 5
_NUMPY_DOMAIN = 389047  # the tracemalloc domain NumPy reports its data buffers in
_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")


# ------------------------------------------------------------------------- report
@dataclass(frozen=True)
class LeakSite:
    """One line of code whose live allocations grew in every traced epoch.

    Attributes:
        filename: the file of the site (the user's own, see :func:`user_frame`).
        lineno: its line.
        function: the function around that line (``Class.method``, ``<module>``).
        bytes_per_epoch: growth of what this line allocated and still holds, host
            allocations and framework tensor buffers together.
        allocations_per_epoch: memory blocks gained per epoch in Python's allocator (about
            one per Python object; NumPy buffers and tensors are counted in ``what``).
        tensor_bytes_per_epoch: the part of ``bytes_per_epoch`` in framework tensors.
        what: the growing tensors and object types, e.g.
            ``("EagerTensor float32[256,256] on cpu:0 +4/epoch",)``.
        traceback: the full traceback of its largest allocation, ``(file, line)`` pairs
            from the oldest frame to the most recent.
        in_user_code: ``False`` when no frame outside the libraries was captured (the
            site is then the outermost captured frame).
    """

    filename: str
    lineno: int
    function: str
    bytes_per_epoch: float
    allocations_per_epoch: float
    tensor_bytes_per_epoch: float = 0.0
    what: tuple[str, ...] = ()
    traceback: tuple[tuple[str, int], ...] = ()
    in_user_code: bool = True

    @property
    def location(self) -> str:
        """``file:line``."""
        return f"{self.filename}:{self.lineno}"

    def growth(self) -> str:
        """How fast it grows: ``+4.0 MiB/epoch in 8 allocations/epoch (NumPy buffer ...)``."""
        text = (
            f"+{format_bytes(round(self.bytes_per_epoch))}/epoch in "
            f"{self.allocations_per_epoch:.0f} allocations/epoch"
        )
        return text + (f" ({'; '.join(self.what)})" if self.what else "")

    def describe(self) -> str:
        """One line: where, in which function, and how fast it grows."""
        return f"{self.location} in {self.function}: {self.growth()}"

    def format_traceback(self) -> list[str]:
        """The traceback as ``traceback.format_list`` would print it, oldest frame first."""
        lines = []
        for filename, lineno in self.traceback:
            lines.append(f'  File "{filename}", line {lineno}')
            source = linecache.getline(filename, lineno).strip()
            if source:
                lines.append(f"    {source}")
        return lines


@dataclass(frozen=True)
class LeakReport:
    """The sites whose memory grew in every epoch from ``first_epoch`` to ``last_epoch``."""

    first_epoch: int
    last_epoch: int
    sites: tuple[LeakSite, ...] = ()

    def __str__(self) -> str:
        if not self.sites:
            return f"no allocation site grew in every epoch {self.first_epoch}-{self.last_epoch}"
        lines = [f"leak sites (growth per epoch, epochs {self.first_epoch}-{self.last_epoch}):"]
        lines += [f"  {site.describe()}" for site in self.sites]
        return "\n".join(lines)

    def markdown(self) -> str:
        """A Markdown list for TensorBoard's text dashboard (one site per line)."""
        if not self.sites:
            return str(self)
        return "\n".join(f"- `{s.location}` in `{s.function}`: {s.growth()}" for s in self.sites)


# ------------------------------------------------------------------------ sampling
@dataclass
class _SiteSample:
    host_bytes: int = 0
    allocations: int = 0
    tensor_bytes: int = 0
    what: collections.Counter[str] = field(default_factory=collections.Counter)
    what_bytes: collections.Counter[str] = field(default_factory=collections.Counter)
    traceback: tuple[tuple[str, int], ...] = ()  # most recent frame first, as tracemalloc's
    largest: int = -1
    in_user_code: bool = True


Site = tuple[str, int]
RawTraceback = tuple[tuple[str, int], ...]  # (filename, lineno), most recent first


def _raw_site(raw: RawTraceback) -> tuple[Site, bool] | None:
    """The site of a raw traceback; ``None`` for the guard's own allocations.

    An allocation is the guard's own when a keras-memguard frame comes before (inside)
    the user's frame; user code run *by* this package (``run_isolated``) stays the user's.
    """
    for filename, lineno in raw:
        if filename.startswith(_PACKAGE_DIR):
            return None
        if not is_library_file(filename):
            return (filename, lineno), True
    return (raw[-1], False) if raw else None


def _raw_object_traceback(obj: object) -> RawTraceback | None:
    traceback = object_traceback(obj)
    return None if traceback is None else tuple((f.filename, f.lineno) for f in reversed(traceback))


def _is_kind(kind: type, bases: tuple[type, ...], cache: dict[type, bool]) -> bool:
    """Whether ``kind`` derives from one of ``bases`` (by its MRO: no ABC machinery)."""
    known = cache.get(kind)
    if known is None:
        known = cache[kind] = any(base in bases for base in kind.__mro__)
    return known


def _tensors(tensor_types: tuple[type, ...], cache: dict[type, bool]) -> list[Any]:
    """The live framework tensors, found through ``gc`` (one pass, no ``isinstance``)."""
    if not tensor_types:
        return []
    objects = gc.get_objects()
    kinds = {kind for kind in set(map(type, objects)) if _is_kind(kind, tensor_types, cache)}
    found = [o for o in objects if type(o) in kinds]
    del objects
    return found


def sample_sites(
    tensor_types: tuple[type, ...], is_tensor: dict[type, bool] | None = None
) -> dict[Site, _SiteSample]:
    """What each site allocated since tracing began and still holds, now.

    ``is_tensor`` caches which types are tensor types, from one sample to the next.
    """
    is_tensor = {} if is_tensor is None else is_tensor
    sites: dict[Site, _SiteSample] = {}

    def add(raw: RawTraceback, found: tuple[Site, bool] | None, size: int) -> _SiteSample | None:
        if found is None:
            return None
        entry = sites.get(found[0])
        if entry is None:
            entry = sites[found[0]] = _SiteSample(in_user_code=found[1])
        if size > entry.largest:
            entry.largest, entry.traceback = size, raw
        return entry

    snapshot = tracemalloc.take_snapshot()
    raw_traces = getattr(snapshot.traces, "_traces", None)
    if raw_traces is None:  # not CPython's tracemalloc.py: rebuild the raw form
        raw_traces = [
            (t.domain, t.size, tuple(reversed([(f.filename, f.lineno) for f in t.traceback])))
            for t in snapshot.traces
        ]
    site_of: dict[int, tuple[Site, bool] | None] = {}
    for trace in raw_traces:
        domain, size, raw = trace[0], trace[1], trace[2]
        key = id(raw)  # identical tracebacks share one tuple in a snapshot
        if key not in site_of:
            site_of[key] = _raw_site(raw)
        found = site_of[key]
        entry = add(raw, found, size)
        if entry is None:
            continue
        entry.host_bytes += size
        if domain == 0:
            entry.allocations += 1
        elif domain == _NUMPY_DOMAIN:
            entry.what["NumPy buffer"] += 1
            entry.what_bytes["NumPy buffer"] += size
    del snapshot, raw_traces
    for tensor in _tensors(tensor_types, is_tensor):
        raw = _raw_object_traceback(tensor)
        if raw is None:  # allocated before tracing began
            continue
        what, nbytes = describe_tensor(tensor)
        entry = add(raw, _raw_site(raw), nbytes)
        if entry is not None:
            entry.tensor_bytes += nbytes
            entry.what[what] += 1
            entry.what_bytes[what] += nbytes
    return sites


def type_counts(objects: list[Any] | None = None) -> dict[type, int]:
    """Live objects tracked by ``gc`` (or ``objects``), counted by type.

    Counted with NumPy: a ``Counter`` allocates an int per increment, and under
    ``tracemalloc`` each allocation records a traceback (30x slower).
    """
    import numpy as np

    objects = gc.get_objects() if objects is None else objects
    kinds = list(set(map(type, objects)))
    index = {kind: i for i, kind in enumerate(kinds)}
    codes = np.fromiter(map(index.__getitem__, map(type, objects)), np.intp, len(objects))
    counts = np.bincount(codes, minlength=len(kinds)).tolist()
    return dict(zip(kinds, counts, strict=True))


def _named_class(kind: type) -> bool:
    """A class worth naming in a report: not a builtin or standard-library type."""
    module = kind.__module__.split(".")[0]
    return module not in sys.stdlib_module_names and module.lstrip("_") != "builtins"


def _types_by_site(
    sites: set[Site], baseline: dict[type, int], skip: set[type]
) -> dict[Site, collections.Counter[str]]:
    """Instances of the classes that grew since ``baseline``, counted by site and type."""
    objects = gc.get_objects()
    grown = {
        kind
        for kind, count in type_counts(objects).items()
        if count > baseline.get(kind, 0) and kind not in skip and _named_class(kind)
    }
    instances = [o for o in objects if type(o) in grown]
    del objects
    found: dict[Site, collections.Counter[str]] = {}
    for obj in instances:
        raw = _raw_object_traceback(obj)
        site = None if raw is None else _raw_site(raw)
        if site is not None and site[0] in sites:
            found.setdefault(site[0], collections.Counter())[_type_name(type(obj))] += 1
    return found


def _type_name(kind: type) -> str:
    module = kind.__module__.split(".")[0]
    return (
        kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    )


def compare(
    samples: list[dict[Site, _SiteSample]],
    min_bytes_per_epoch: float = MIN_BYTES_PER_EPOCH,
    top: int = TOP_SITES,
) -> list[LeakSite]:
    """The sites that grew in every interval between ``samples``, largest growth first."""
    epochs = len(samples) - 1
    if epochs < 1:
        return []
    found = []
    empty = _SiteSample()
    # Rates run from the first traced sample: the interval after the baseline also holds
    # what is merely replaced each epoch (made after the baseline, alive at each sample).
    start = 1 if epochs > 1 else 0
    epochs -= start
    for site in set().union(*samples):
        series = [s.get(site, empty) for s in samples]
        totals = [e.host_bytes + e.tensor_bytes for e in series]
        steps = [b - a for a, b in itertools.pairwise(totals)]
        if min(steps) <= 0 or (totals[-1] - totals[start]) / epochs < min_bytes_per_epoch:
            continue
        first, last = series[start], series[-1]
        grown = last.what - first.what
        sizes = last.what_bytes - first.what_bytes
        largest = sorted(grown, key=lambda name: (-sizes[name], -grown[name], name))[:3]
        found.append(
            LeakSite(
                filename=site[0],
                lineno=site[1],
                function=function_at(*site),
                bytes_per_epoch=(totals[-1] - totals[start]) / epochs,
                allocations_per_epoch=(last.allocations - first.allocations) / epochs,
                tensor_bytes_per_epoch=(last.tensor_bytes - first.tensor_bytes) / epochs,
                what=tuple(f"{name} +{grown[name] / epochs:g}/epoch" for name in largest),
                traceback=tuple(reversed(last.traceback)),
                in_user_code=last.in_user_code,
            )
        )
    found.sort(key=lambda s: (not s.in_user_code, -s.bytes_per_epoch))
    return found[:top]


# ------------------------------------------------------------------------- tracer
class LeakTracer:
    """Traces allocations across a few epochs when growth is suspected; then reports.

    Args:
        mode: ``None`` (trace once the caller says growth is suspected), ``True`` (trace
            from the first epoch after ``warmup_epochs``) or ``False`` (never).
        warmup_epochs: epochs never traced, with ``mode=True``. Defaults to `1`.
        epochs: traced epochs compared after the baseline. Defaults to `2`.
        min_bytes_per_epoch: smallest growth reported for one site. Defaults to 256 KiB.
        top: most sites reported. Defaults to `5`.
        frames: frames kept per allocation traceback. Defaults to `64`.
        max_traces: tracing runs at most this many times per ``fit`` (a trace that finds
            no site may be retried while growth is still suspected). Defaults to `3`.

    Example:
        >>> tracer = LeakTracer(None)
        >>> report = tracer.epoch_end(epoch, suspected=detector.streak > 0)
        >>> if report is not None and report.sites:
        ...     print(report)
    """

    def __init__(
        self,
        mode: bool | None = None,
        *,
        warmup_epochs: int = 1,
        epochs: int = 2,
        min_bytes_per_epoch: float = MIN_BYTES_PER_EPOCH,
        top: int = TOP_SITES,
        frames: int = TRACE_FRAMES,
        max_traces: int = 3,
    ) -> None:
        self.mode = mode
        self.warmup_epochs = warmup_epochs
        self.epochs = epochs
        self.min_bytes_per_epoch = min_bytes_per_epoch
        self.top = top
        self.frames = frames
        self.max_traces = max_traces
        self.report: LeakReport | None = None  # the last report with sites
        self.traced_epochs: list[int] = []  # epochs whose end was sampled
        self._traces = 0
        self._samples: list[dict[Site, _SiteSample]] = []
        self._first_epoch = 0
        self._tensor_types: tuple[type, ...] = ()
        self._is_tensor: dict[type, bool] = {}
        self._baseline_types: dict[type, int] = {}
        self._started_tracemalloc = False
        self._done = mode is False

    @property
    def tracing(self) -> bool:
        """Whether a trace is in progress (its report comes within ``epochs`` epochs)."""
        return bool(self._samples)

    def epoch_end(self, epoch: int, suspected: bool) -> LeakReport | None:
        """Call at each epoch end; returns a report when a trace completes, else ``None``."""
        if self._done:
            return None
        try:
            if not self._samples:
                wanted = suspected if self.mode is None else epoch >= self.warmup_epochs
                if wanted:
                    self._start(epoch)
                return None
            self._sample(epoch)
            if len(self._samples) <= self.epochs:
                return None
            return self._finish(epoch)
        except Exception as err:  # forensics must never kill training
            warn_once("leak-tracing", f"keras-memguard could not trace allocations: {err}")
            self.close()
            self._done = True
            return None

    def close(self) -> None:
        """Stops tracing (``tracemalloc`` too, if this tracer started it)."""
        self._samples = []
        self._baseline_types = {}
        if self._started_tracemalloc:
            tracemalloc.stop()
            self._started_tracemalloc = False

    def _start(self, epoch: int) -> None:
        self._traces += 1
        self._first_epoch = epoch
        self._tensor_types, self._is_tensor = tensor_types(), {}
        self._baseline_types = type_counts()  # before tracing starts: it costs less
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
            self._started_tracemalloc = True
        self._sample(epoch)

    def _sample(self, epoch: int) -> None:
        self.traced_epochs.append(epoch)
        self._samples.append(sample_sites(self._tensor_types, self._is_tensor))

    def _finish(self, epoch: int) -> LeakReport:
        sites = compare(self._samples, self.min_bytes_per_epoch, self.top)
        if sites:  # name the classes each site holds, fewest instances (the owners) first
            epochs = len(self._samples) - 1  # instances since the baseline, so all epochs
            tensors = {kind for kind, known in self._is_tensor.items() if known}
            where = {(s.filename, s.lineno) for s in sites}
            types = _types_by_site(where, self._baseline_types, tensors)
            for i, site in enumerate(sites):
                counts = types.get((site.filename, site.lineno), collections.Counter())
                owners = sorted(counts.items(), key=lambda item: (item[1], item[0]))[:3]
                extra = tuple(f"{name} +{n / epochs:g}/epoch" for name, n in owners)
                sites[i] = replace(site, what=site.what + extra)
        report = LeakReport(self._first_epoch, epoch, tuple(sites))
        self.close()
        if sites:
            self.report = report
        self._done = bool(sites) or self.mode is True or self._traces >= self.max_traces
        return report

    def warning_suffix(self) -> str:
        """What to append to the growth warning: the top site, or that tracing is on."""
        if self.report is not None and self.report.sites:
            site = self.report.sites[0]
            return (
                f" Most of it is allocated at {site.location} in {site.function} "
                f"(+{format_bytes(round(site.bytes_per_epoch))}/epoch); see the summary."
            )
        if self.tracing:
            left = self.epochs + 1 - len(self._samples)
            return f" Locating the allocation sites (within {left} epoch(s))."
        return ""
