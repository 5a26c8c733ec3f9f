"""The guard's decisions as pure functions over snapshots: bounds, crossings, leak slope.

Nothing here touches Keras, a framework or a file: the callback feeds snapshots in and
acts on what comes out, so every decision is tested without ``fit``.

Example:
    >>> bounds = Bounds(max_process_memory=parse_size("8GiB", name="max_process_memory"))
    >>> [c.metric for c in crossings(bounds, snap)]
    ['process_tree']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from keras_memguard.memory_snapshot import MIB, GpuSnapshot, MemorySnapshot
from keras_memguard.sizes import Size, format_bytes

if TYPE_CHECKING:
    from keras_memguard.guard.growth import GrowthReport
    from keras_memguard.guard.leaks import LeakSite

__all__ = [
    "LOW_MEMORY_WARNING",
    "Bounds",
    "Crossing",
    "Halt",
    "LeakDetector",
    "MemGuardSummary",
    "available_floor",
    "bounds_mib",
    "crossings",
    "default_floor",
    "gpu_peaks_since_check",
    "gpus_without_total",
    "is_low_memory",
    "low_memory_message",
    "slope",
    "train_end_release",
    "unbounded_gpus_message",
]

LOW_MEMORY_WARNING = 0.10  # warn (never halt) below this fraction of the effective limit
# A full collection at train end is worth its cost (0.2 s or more with TensorFlow loaded)
# only when the process tree grew during the fit by more than the larger of these.
RELEASE_MIN_GROWTH = 64 * MIB
RELEASE_GROWTH_FRACTION = 0.05


# The floor a guard with no arguments keeps free below the limit, on top of the
# projected growth and the save (guard/headroom.py): what a check cannot see (allocator
# granularity, the sampler's lag, a step a little bigger than the last) and the room the
# kernel needs near a cgroup's limit, where it reclaims the process's own file pages
# (its code) and the run thrashes before the OOM killer acts. 4%: the benchmark's goal
# is no run above 97% of the limit (benchmarks/bench_safety.py), with a point to spare.
FLOOR_FRACTION = 0.04
FLOOR_MIN = 32 * MIB
FLOOR_MAX = 1024 * MIB


def default_floor(limit: int | None) -> int:
    """The floor of a guard with no arguments: 4% of ``limit``, in [32 MiB, 1 GiB].

    The projected growth and the save are reserved on top of it (``headroom.outlook``).

    Example:
        >>> [default_floor(n * 1024 * MIB) // MIB for n in (1, 3, 64)]
        [40, 122, 1024]
    """
    if limit is None:
        return FLOOR_MIN
    return min(max(int(FLOOR_FRACTION * limit), FLOOR_MIN), FLOOR_MAX)


@dataclass(frozen=True)
class Bounds:
    """The bounds a guard enforces; fractions resolve against the snapshot's totals."""

    max_process_memory: Size | None = None
    min_available_memory: Size | None = None
    max_gpu_memory: Size | None = None
    emergency_available_memory: Size | None = None
    # emergency_available_memory="auto": the floor of guard/headroom.default_floor, and
    # the GPU allocator's limit as a bound where max_gpu_memory is not given
    auto_floor: bool = False


@dataclass(frozen=True)
class Crossing:
    """One bound crossed now: what crossed, the parameter that set the bound, in bytes.

    ``metric`` is the figure's key without its unit: ``process_tree``,
    ``effective_available``, ``gpu0_allocated_peak`` (or ``gpu0_allocated``,
    ``gpu0_process``, ``gpu0_device_used`` where the allocator's peak is not reported).
    """

    metric: str
    parameter: str
    value: int
    bound: int
    # bytes held back from the bound: the growth projected until training can stop,
    # and the save's own memory (guard/headroom.py); 0 for a bound crossed as it stands
    reserve: int = 0


PHASES = ("train", "validation", "evaluate", "predict")


@dataclass(frozen=True)
class Halt:
    """One crossing of a bound that stopped (or would have stopped) a phase.

    ``phase`` is ``"train"``, ``"validation"`` (the pass inside ``fit``), ``"evaluate"``
    or ``"predict"``; ``epoch`` is ``None`` outside ``fit``.
    """

    metric: str
    value: int
    bound: int
    epoch: int | None
    batch: int | None
    action: str
    checkpoint: str | None
    phase: str = "train"
    reserve: int = 0  # see Crossing.reserve
    crossed_by: str | None = None  # the worker that crossed it, where the vote says

    def describe(self) -> str:
        text = self._describe()
        return text if self.crossed_by is None else f"{self.crossed_by}: {text}"

    def _describe(self) -> str:
        parts = [] if self.epoch is None else [f"epoch {self.epoch}"]
        if self.batch is not None:
            parts.append(f"{'' if self.phase == 'train' else self.phase + ' '}batch {self.batch}")
        elif self.phase != "train":
            parts.append(f"the end of {self.phase}")
        where = ", ".join(parts) or self.phase
        if self.metric == "another_worker":
            return f"another worker crossed its memory bound at {where}"
        relation = "fell below" if self.metric == "effective_available" else "crossed"
        value, bound = format_bytes(self.value), format_bytes(self.bound)
        below = self.metric == "effective_available"
        if self.reserve and (self.value >= self.bound if below else self.value <= self.bound):
            # halted before the crossing, while the growth to come and the save still fit
            sign = "+" if self.metric == "effective_available" else "-"
            reserve = format_bytes(self.reserve)
            return (
                f"{self.metric} {value} would have {relation.replace('fell', 'fallen')} the "
                f"bound {bound} by the next check ({bound} {sign} {reserve} reserved for the "
                f"growth until training stops and the save) at {where}"
            )
        if value == bound:  # "4.0 GiB crossed the bound 4.0 GiB" says nothing: say by how much
            by = format_bytes(abs(self.value - self.bound))
            return f"{self.metric} {relation} the bound {bound} by {by} at {where}"
        return f"{self.metric} {value} {relation} the bound {bound} at {where}"


@dataclass
class MemGuardSummary:
    """What one ``fit`` did to memory. ``print(summary)`` gives a compact report."""

    epochs: int = 0
    start_process_tree: int | None = None
    peak_process_tree: int | None = None
    end_process_tree: int | None = None
    min_effective_available: int | None = None
    peak_gpu: dict[int, int] = field(default_factory=dict)
    leak_slope_mib_per_epoch: float | None = None
    halts: list[Halt] = field(default_factory=list)
    release: object | None = None
    # issue #16: where the growing memory is allocated, largest growth first
    leak_sites: list[LeakSite] = field(default_factory=list)
    # issue #27: what kind of growth it is, largest first (None: none named)
    growth: GrowthReport | None = None
    # issue #30: the workers' votes in this fit (a collective each; 0 with one worker)
    votes: int = 0

    def __call__(self) -> None:
        """Prints the summary, so ``guard.summary()`` works as ``model.summary()`` does."""
        print(self)

    def __str__(self) -> str:
        b = format_bytes
        lines = [
            f"keras-memguard: {self.epochs} epoch(s); process tree "
            f"{b(self.start_process_tree)} -> {b(self.end_process_tree)} "
            f"(peak {b(self.peak_process_tree)}); lowest available "
            f"{b(self.min_effective_available)}"
        ]
        for index, peak in sorted(self.peak_gpu.items()):
            lines.append(f"  GPU {index}: peak {b(peak)}")
        if self.leak_slope_mib_per_epoch is not None:
            lines.append(f"  growth: {self.leak_slope_mib_per_epoch:+.1f} MiB/epoch")
        if self.leak_sites:  # issue #16
            lines.append("  leak sites (growth per epoch):")
            lines += [f"    {site.describe()}" for site in self.leak_sites]
        if self.growth is not None and self.growth.kinds:  # issue #27
            lines.append("  kinds of growth (per epoch, share of the growth):")
            lines += [f"    {kind.describe()}" for kind in self.growth.kinds]
        for halt in self.halts:
            saved = f"; saved {halt.checkpoint}" if halt.checkpoint else ""
            lines.append(f"  {halt.action}: {halt.describe()}{saved}")
        freed = getattr(self.release, "freed", 0)
        if freed:
            lines.append(f"  released {b(freed)} at train end")
        return "\n".join(lines)


def available_floor(bounds: Bounds, snap: MemorySnapshot) -> tuple[str, int] | None:
    """The floor on available memory in force, with the parameter that set it."""
    size, name = bounds.min_available_memory, "min_available_memory"
    if size is None:
        size, name = bounds.emergency_available_memory, "emergency_available_memory"
    if size is None and bounds.auto_floor:
        limit = snap.effective_limit
        return None if limit is None else (name, default_floor(limit))
    value = size.resolve(snap.effective_limit) if size is not None else None
    return None if value is None else (name, value)


def crossings(bounds: Bounds, snap: MemorySnapshot) -> list[Crossing]:
    """Every bound that ``snap`` crosses, process first."""
    found = []
    tree = snap.process_tree
    if bounds.max_process_memory is not None and tree is not None:
        bound = bounds.max_process_memory.resolve(snap.effective_limit)
        if bound is not None and tree > bound:
            found.append(Crossing("process_tree", "max_process_memory", tree, bound))
    floor = available_floor(bounds, snap)
    available = snap.effective_available
    if floor is not None and available is not None and available < floor[1]:
        found.append(Crossing("effective_available", floor[0], available, floor[1]))
    if bounds.max_gpu_memory is not None:
        for gpu in snap.gpus:
            bound, guarded = bounds.max_gpu_memory.resolve(gpu.total), gpu.guarded
            if bound is not None and guarded is not None and guarded[1] > bound:
                metric = f"gpu{gpu.index}_{guarded[0]}"
                found.append(Crossing(metric, "max_gpu_memory", guarded[1], bound))
    return found


def gpus_without_total(bounds: Bounds, snap: MemorySnapshot) -> list[int]:
    """GPUs a fractional ``max_gpu_memory`` cannot bound: their total is unknown."""
    size = bounds.max_gpu_memory
    if size is None or size.fraction is None:
        return []
    return [gpu.index for gpu in snap.gpus if gpu.total is None]


def unbounded_gpus_message(max_gpu_memory: Size | None, missing: list[int]) -> str:
    """The warning that a fractional ``max_gpu_memory`` bounds none of ``missing``."""
    return (
        f"keras-memguard: max_gpu_memory={max_gpu_memory} is DISABLED for GPU(s) "
        f"{missing}: their total memory is unknown (no NVML, and the framework "
        "reports no limit). Give the bound in bytes, e.g. max_gpu_memory='12GiB', "
        "or install nvidia-ml-py."
    )


def gpu_peaks_since_check(
    gpus: tuple[GpuSnapshot, ...], seen: dict[int, int], temporaries: int | None = None
) -> tuple[tuple[GpuSnapshot, ...], dict[int, int]]:
    """Each GPU's allocator peak *since the previous check*, and the peaks now seen.

    A resettable peak (reset after every check) is already that. A peak that cannot be
    reset (JAX's ``peak_bytes_in_use``, the highest since the process started) tells
    something new only when it rose above the one seen at the previous check. When it
    did not, the peak since the check is estimated as the live bytes plus the compiled
    step's ``temporaries`` where the pre-flight knows them (never above the peak since
    the process started); where it does not, it is dropped and the bound falls back to
    the live bytes (the rise-only rule: a step that peaks below an earlier high is not
    seen, docs/callback.md).

    Example:
        >>> gpus, seen = gpu_peaks_since_check((gpu,), {0: gpu.allocated_peak})
        >>> gpus[0].allocated_peak is None   # (when not resettable and not risen)
        True
        >>> gpus, _ = gpu_peaks_since_check((gpu,), seen, temporaries=2 * GIB)
        >>> gpus[0].allocated_peak == min(gpu.allocated + 2 * GIB, gpu.allocated_peak)
        True
    """
    out, now = [], dict(seen)
    for gpu in gpus:
        peak = gpu.allocated_peak
        if peak is not None and not gpu.peak_resettable:
            last = seen.get(gpu.index)
            now[gpu.index] = peak if last is None else max(last, peak)
            if last is not None and peak <= last:
                estimate = None
                if temporaries is not None and gpu.allocated is not None:
                    estimate = min(peak, gpu.allocated + temporaries)
                gpu = replace(gpu, allocated_peak=estimate)
        out.append(gpu)
    return tuple(out), now


def bounds_mib(bounds: Bounds, snap: MemorySnapshot) -> dict[str, float]:
    """The bounds in force as ``{key: MiB}`` for charts (drawn beside the figures)."""
    values = {}
    if bounds.max_process_memory is not None:
        values["bound_process_mib"] = mib(bounds.max_process_memory.resolve(snap.effective_limit))
    floor = available_floor(bounds, snap)
    if floor is not None:
        values["bound_available_mib"] = mib(floor[1])
    if bounds.max_gpu_memory is not None:
        for gpu in snap.gpus:
            values[f"gpu{gpu.index}_bound_mib"] = mib(bounds.max_gpu_memory.resolve(gpu.total))
    return values


def is_low_memory(snap: MemorySnapshot) -> bool | None:
    """Whether less than ``LOW_MEMORY_WARNING`` of the limit is available (None: unknown)."""
    limit, available = snap.effective_limit, snap.effective_available
    if limit is None or available is None:
        return None
    return available < LOW_MEMORY_WARNING * limit


def low_memory_message(snap: MemorySnapshot) -> str:
    """The warning for ``is_low_memory``: how little is left, and the bounds to set."""
    return (
        f"keras-memguard: only {format_bytes(snap.effective_available)} of "
        f"{format_bytes(snap.effective_limit)} is available; set max_process_memory "
        "or min_available_memory to stop cleanly before the OOM killer acts."
    )


def mib(value: int | None) -> float:
    """Bytes as MiB rounded to 3 places; NaN for an unknown figure."""
    return float("nan") if value is None else round(value / MIB, 3)


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (epoch, MiB) points, in MiB per epoch."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


class LeakDetector:
    """Sustained growth of epoch-end memory: a slope over recent epochs, with patience.

    Example:
        >>> leak = LeakDetector(warmup_epochs=1, threshold_mib=4.0, patience=3)
        >>> for epoch, rss_mib in enumerate([500, 540, 580, 620, 660, 700]):
        ...     slope_now, warn_now = leak.update(epoch, rss_mib)
        >>> warn_now or leak.warned
        True
    """

    def __init__(self, warmup_epochs: int, threshold_mib: float, patience: int) -> None:
        self.warmup_epochs = warmup_epochs
        self.threshold_mib = threshold_mib
        self.patience = patience
        self.points: list[tuple[int, float]] = []
        self.streak = 0
        self.warned = False

    def update(self, epoch: int, rss_mib: float) -> tuple[float | None, bool]:
        """Adds one epoch's figure; returns (slope or None, whether to warn now)."""
        self.points.append((epoch, rss_mib))
        points = [p for i, p in enumerate(self.points) if i >= self.warmup_epochs]
        points = points[-max(self.patience + 2, 5) :]
        if len(points) < 3:
            return None, False
        value = slope(points)
        self.streak = self.streak + 1 if value > self.threshold_mib else 0
        warn = self.streak >= self.patience and not self.warned
        self.warned = self.warned or warn
        return value, warn


def epochs_until(bound: int | None, current: int | None, slope_mib: float) -> int | None:
    """Epochs until ``current`` reaches ``bound`` at ``slope_mib`` per epoch (None: never)."""
    if bound is None or current is None or slope_mib <= 0:
        return None
    return max(1, math.ceil((bound - current) / MIB / slope_mib))


def train_end_release(start_tree: int | None, snap: MemorySnapshot) -> str | None:
    """Why a *full* collection is worth its cost at train end, or ``None``.

    A full ``gc.collect()`` walks every object the process holds: with TensorFlow
    loaded that is about 0.2 s, on every ``fit``. Garbage it alone can free (reference
    cycles promoted to the old generation) can matter only where the process tree grew
    during the fit by more than ``max(RELEASE_MIN_GROWTH, RELEASE_GROWTH_FRACTION *
    start)``, or where available memory is low; elsewhere a young-generation
    collection (microseconds) is enough. An unknown figure counts as a reason.

    Example:
        >>> train_end_release(start_tree=500 * MIB, snap=snap_at_800_mib)
        'the process tree grew by 300.0 MiB during fit'
    """
    tree = snap.process_tree
    if start_tree is None or tree is None:
        return "the process tree's size is unknown"
    grew = tree - start_tree
    if grew > max(RELEASE_MIN_GROWTH, RELEASE_GROWTH_FRACTION * start_tree):
        return f"the process tree grew by {format_bytes(grew)} during fit"
    if is_low_memory(snap):
        return "available memory is low"
    return None
