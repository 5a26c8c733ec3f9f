"""What kind of growth it is: a pure classifier over the evidence of a few traced epochs.

When the guard suspects growth, it gathers :class:`GrowthEvidence` over the epochs it
traces (see :mod:`keras_memguard.guard.growth_probe`) and :func:`classify` names the kinds
that explain it, each with its figure (bytes per epoch and share of the growth), largest
first:

- ``objects``: Python objects and NumPy buffers the user's code keeps (its ``file:line``);
- ``tensors``: framework tensors the user's code keeps (its ``file:line``);
- ``cycles``: garbage in reference cycles that only a full ``gc.collect()`` frees
  (measured: what the guard's collection gave back, with the creation sites);
- ``recompilation``: new traces or compilations in every epoch (count, functions, input
  shapes); the native growth beside them is their compiled code;
- ``allocator``: the framework's device pool growing while live tensors stay flat;
- ``native``: RSS growing with none of the above: memory outside Python and the
  framework's allocators (a C library, glibc keeping freed pages): not the user's leak;
- ``unexplained``: the rest of the growth, when other kinds explain only part of it.

A kind is named only above ``max(floor, MIN_SHARE of the growth)``; a run whose growth
stays below the floor names nothing.

Example:
    >>> report = classify(GrowthEvidence(3, 5, rss_growth=4 * MIB, cycles=Cycles(4 * MIB)))
    >>> [kind.kind for kind in report.kinds]
    ['cycles']
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_memguard.guard.leaks import LeakSite
from keras_memguard.sizes import format_bytes

__all__ = [
    "KINDS",
    "MIN_SHARE",
    "Compilations",
    "Cycles",
    "GrowthEvidence",
    "GrowthKind",
    "GrowthReport",
    "classify",
    "growth_lines",
]

MIB = 2**20
KINDS = ("objects", "tensors", "cycles", "recompilation", "allocator", "native", "unexplained")
MIN_SHARE = 0.10  # a kind explaining less than this share of the growth is not named
FLOOR = 256 * 1024  # nor one below this many bytes per epoch
ADVICE = {
    "objects": "your code keeps these objects: drop the references (see the sites)",
    "tensors": "your code keeps these tensors: drop the references (see the sites)",
    "cycles": (
        "objects in reference cycles wait for a full collection: break the cycle "
        "(weakref, del), or call gc.collect() between phases"
    ),
    "recompilation": (
        "a step is traced and compiled again for new input shapes: pad or bucket the "
        "shapes (fixed batch size, drop_remainder=True), or mark them dynamic"
    ),
    "allocator": (
        "the framework's pool keeps freed blocks for reuse: not a leak; cap it "
        "(configure_gpus) or release it between phases"
    ),
    "native": (
        "not a leak in your code: memory outside Python and the framework's allocators "
        "(a C library, or glibc keeping freed pages); run each phase in its own process "
        "(run_isolated), set MALLOC_ARENA_MAX=2, or call malloc_trim between phases "
        "(release_memory)"
    ),
    "unexplained": "no evidence explains this part; trace_leaks=True and a longer run may",
}


@dataclass(frozen=True)
class Cycles:
    """What the guard's measured full collections freed, per traced epoch.

    Attributes:
        bytes_per_epoch: host bytes (``tracemalloc``) plus tensor bytes freed per epoch.
        sites: ``(file:line, bytes per epoch)`` where the freed objects were created,
            largest first (only objects created while tracing have a site).
        what: the largest freed objects by type, e.g. ``("ndarray float64[65536] +8/epoch",)``.
    """

    bytes_per_epoch: float
    sites: tuple[tuple[str, float], ...] = ()
    what: tuple[str, ...] = ()


@dataclass(frozen=True)
class Compilations:
    """New traces or compilations counted in each traced epoch.

    Attributes:
        per_epoch: the count in each traced epoch, in order.
        functions: ``(function, count)`` over the traced epochs, most first.
        shapes: the input shapes of the latest traces, e.g. ``("f: float32[43,8]",)``.
        source: what counted them (``"jax.monitoring"``, ...).
    """

    per_epoch: tuple[int, ...]
    functions: tuple[tuple[str, int], ...] = ()
    shapes: tuple[str, ...] = ()
    source: str = ""

    @property
    def steady(self) -> bool:
        """Whether every traced epoch compiled something (a one-off warm-up does not)."""
        return bool(self.per_epoch) and min(self.per_epoch) > 0

    @property
    def mean(self) -> float:
        return sum(self.per_epoch) / len(self.per_epoch) if self.per_epoch else 0.0


@dataclass(frozen=True)
class GrowthEvidence:
    """Everything measured over the traced epochs ``first_epoch`` to ``last_epoch``.

    Figures are bytes per epoch; ``None`` where nothing could be read.

    Attributes:
        rss_growth: the process's RSS growth, read after ``malloc_trim(0)`` (pages in use).
        sites: the leak tracer's sites (objects and tensors the user's code keeps).
        cycles: what the measured full collections freed.
        compilations: new traces/compilations; ``None`` where the framework exposes none.
        device_allocated_growth: growth of live bytes in the framework's device pools.
        device_reserved_growth: growth of what those pools hold from the devices.
        tensors_on_device: whether the sites' tensors live on a device, not in RSS.
        trimmed: bytes ``malloc_trim(0)`` gave back when tracing began (pages glibc
            kept free since the fit began).
        floor: the smallest growth per epoch worth naming.
    """

    first_epoch: int
    last_epoch: int
    rss_growth: float | None = None
    sites: tuple[LeakSite, ...] = ()
    cycles: Cycles | None = None
    compilations: Compilations | None = None
    device_allocated_growth: float | None = None
    device_reserved_growth: float | None = None
    tensors_on_device: bool = False
    trimmed: int | None = None
    floor: float = FLOOR


@dataclass(frozen=True)
class GrowthKind:
    """One kind of growth with its figure and the evidence for it.

    Attributes:
        kind: one of ``KINDS``.
        bytes_per_epoch: its growth per epoch.
        share: its part of the growth (0 to 1).
        evidence: what shows it, e.g. ``("created at train.py:12 +4.0 MiB/epoch",)``.
        compilations_per_epoch: for ``recompilation``, the new compilations per epoch.
    """

    kind: str
    bytes_per_epoch: float
    share: float
    evidence: tuple[str, ...] = ()
    compilations_per_epoch: float | None = None

    @property
    def advice(self) -> str:
        return ADVICE[self.kind]

    def headline(self) -> str:
        """``cycles +4.0 MiB/epoch (97%)``."""
        return f"{self.kind} +{format_bytes(round(self.bytes_per_epoch))}/epoch ({self.share:.0%})"

    def describe(self) -> str:
        """The headline, its evidence and what to do, on one line."""
        evidence = f": {'; '.join(self.evidence)}" if self.evidence else ""
        return f"{self.headline()}{evidence}. {self.advice[0].upper()}{self.advice[1:]}."


@dataclass(frozen=True)
class GrowthReport:
    """The kinds of growth over traced epochs, largest first (none: nothing to name)."""

    first_epoch: int
    last_epoch: int
    growth: float
    kinds: tuple[GrowthKind, ...] = ()

    def headline(self) -> str:
        """``cycles +4.0 MiB/epoch (97%), objects ...``; empty when nothing is named."""
        return ", ".join(kind.headline() for kind in self.kinds)

    def __str__(self) -> str:
        epochs = f"epochs {self.first_epoch}-{self.last_epoch}"
        if not self.kinds:
            return f"no kind of growth to name ({epochs})"
        lines = [f"kinds of growth (+{format_bytes(round(self.growth))}/epoch, {epochs}):"]
        return "\n".join(lines + [f"  {kind.describe()}" for kind in self.kinds])

    def markdown(self) -> str:
        """A Markdown list for TensorBoard's text dashboard, one kind per line."""
        if not self.kinds:
            return str(self)
        return "\n".join(f"- {kind.describe()}" for kind in self.kinds)


def growth_lines(markdown: str) -> list[str]:
    """The lines :meth:`GrowthReport.markdown` wrote, as plain text (``memguard report``)."""
    return [line.removeprefix("- ") for line in markdown.splitlines() if line.startswith("- ")]


def _site_line(site: LeakSite, size: float) -> str:
    return f"{site.location} in {site.function} +{format_bytes(round(size))}/epoch"


def _candidates(ev: GrowthEvidence) -> tuple[dict[str, float], dict[str, tuple[str, ...]]]:
    """Each kind's bytes per epoch and its evidence, before the floor is applied."""
    sizes: dict[str, float] = {}
    evidence: dict[str, tuple[str, ...]] = {}
    host_sites = [(s, s.bytes_per_epoch - s.tensor_bytes_per_epoch) for s in ev.sites]
    tensor_sites = [(s, s.tensor_bytes_per_epoch) for s in ev.sites]
    for kind, found in (("objects", host_sites), ("tensors", tensor_sites)):
        found = sorted(((s, b) for s, b in found if b > 0), key=lambda item: -item[1])
        sizes[kind] = sum(b for _, b in found)
        evidence[kind] = tuple(_site_line(s, b) for s, b in found[:3])
    if ev.cycles is not None:
        sizes["cycles"] = ev.cycles.bytes_per_epoch
        freed = f"a full gc.collect() freed +{format_bytes(round(ev.cycles.bytes_per_epoch))}/epoch"
        created = [
            f"created at {where} +{format_bytes(round(b))}/epoch"
            for where, b in ev.cycles.sites[:3]
        ]
        evidence["cycles"] = (freed, *created, *ev.cycles.what[:3])
    allocated, reserved = ev.device_allocated_growth, ev.device_reserved_growth
    if reserved is not None:
        sizes["allocator"] = reserved - max(allocated or 0.0, 0.0)
        live = allocated or 0.0
        sign = "+" if live >= 0 else "-"
        evidence["allocator"] = (
            f"device pool +{format_bytes(round(reserved))}/epoch while live tensors "
            f"{sign}{format_bytes(round(abs(live)))}/epoch",
        )
    host = sizes["objects"] + sizes.get("cycles", 0.0)
    if not ev.tensors_on_device:
        host += sizes["tensors"]
    rest = None if ev.rss_growth is None else ev.rss_growth - host
    comp = ev.compilations
    if comp is not None and comp.steady:
        parts = [f"{comp.mean:g} new compilations/epoch ({comp.source})"]
        parts += [f"{name} x{count}" for name, count in comp.functions[:3]]
        if comp.shapes:
            parts.append("latest input shapes " + ", ".join(comp.shapes[-3:]))
        if rest is not None and rest > 0:  # the compiled code and graphs are native memory
            parts.append("native memory beside them counted as their compiled code")
        sizes["recompilation"] = max(rest or 0.0, 0.0)
        evidence["recompilation"] = tuple(parts)
        rest = 0.0
    if rest is not None and rest > 0:
        explained = any(sizes.get(k, 0.0) >= ev.floor for k in ("objects", "tensors", "cycles"))
        kind = "unexplained" if explained else "native"
        sizes[kind] = rest
        if kind == "native":
            lines = [
                f"RSS +{format_bytes(round(ev.rss_growth or 0))}/epoch; Python objects, "
                "tensors, cycles and compilations do not grow"
            ]
            if ev.trimmed is not None:
                lines.append(
                    f"malloc_trim(0) gave back {format_bytes(ev.trimmed)} glibc held free "
                    "when tracing began"
                )
            evidence[kind] = tuple(lines)
        else:
            evidence[kind] = (f"RSS +{format_bytes(round(ev.rss_growth or 0))}/epoch",)
    return sizes, evidence


def classify(evidence: GrowthEvidence) -> GrowthReport:
    """Names the kinds of growth in ``evidence``, largest first (see the module docstring).

    Example:
        >>> ev = GrowthEvidence(3, 5, rss_growth=8 * MIB, sites=(numpy_site,))
        >>> classify(ev).kinds[0].kind
        'objects'
    """
    sizes, found = _candidates(evidence)
    host = evidence.rss_growth if evidence.rss_growth is not None else 0.0
    device = max(evidence.device_reserved_growth or 0.0, evidence.device_allocated_growth or 0.0)
    if evidence.tensors_on_device:
        device = max(device, sizes.get("tensors", 0.0))
    total = max(host, 0.0) + max(device, 0.0)
    total = max(total, sum(size for size in sizes.values() if size > 0))
    floor = max(evidence.floor, MIN_SHARE * total)
    compiled = evidence.compilations.mean if evidence.compilations is not None else None
    kinds = [
        GrowthKind(
            kind,
            size,
            size / total if total else 0.0,
            found.get(kind, ()),
            compiled if kind == "recompilation" else None,
        )
        for kind, size in sizes.items()
        # recompilation is named by its count, even where its bytes are few
        if size >= floor or kind == "recompilation"
    ]
    if total < evidence.floor:
        kinds = []
    kinds.sort(key=lambda k: (-k.bytes_per_epoch, KINDS.index(k.kind)))
    return GrowthReport(evidence.first_epoch, evidence.last_epoch, total, tuple(kinds))
