"""Room for the halt: growth per batch, the save's cost, when to halt and when to check.

Pure functions over figures in bytes: nothing here touches Keras or a file, so every
decision is tested without ``fit``. The callback records one :class:`Reading` per check
and asks :func:`outlook` two questions: does the memory projected at the next check,
plus what the halt's save will take, cross a bound or the floor (then it halts *now*,
while there is room to save)? And how many batches may pass before the next check?

Example:
    >>> rates = growth_per_batch(Reading(0, {"used": 500 * MIB}), Reading(2, {"used": 700 * MIB}))
    >>> rates["used"] / MIB
    100.0
    >>> look = outlook(bounds, snap, rates, save=64 * MIB, extra_batches=1)
    >>> look.crossings, look.batches_to_check
    ([], 1)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from keras_memguard.guard.policy import Bounds, Crossing, available_floor, default_floor
from keras_memguard.memory_snapshot import MemorySnapshot

__all__ = [
    "NEAR_FRACTION",
    "SAVE_COST",
    "WARMUP_CHECKS",
    "Outlook",
    "Reading",
    "gpu_bound",
    "growth_per_batch",
    "outlook",
    "reading",
    "save_headroom",
    "temporary_path",
]

# Within this fraction of the limit of a bound (after the reserve), check every batch.
NEAR_FRACTION = 0.05
# Growth may speed up: the next check comes while the room left holds this many times
# the growth expected until then.
GROWTH_SAFETY = 2.0
# Checks at every batch-begin hook at the start of a fit: a fast leak is seen from batch 0.
WARMUP_CHECKS = 3
# The extra memory a save takes at its peak, measured on TensorFlow, JAX and PyTorch
# (docs/callback.md): (per byte of saved state, per byte of the largest variable).
# ``.keras`` builds its HDF5 part in memory (Keras does when the machine's RAM looks
# sufficient), then zips it; ``.weights.h5`` writes variable by variable.
SAVE_COST = {".keras": (1.0, 2.0), ".weights.h5": (0.0, 2.0)}


def save_headroom(path: str | None, state_bytes: int, largest_variable: int) -> int:
    """Bytes a save of ``state_bytes`` of variables (model + optimizer) needs at its peak.

    Example:
        >>> save_headroom("guard.keras", 576 * MIB, 64 * MIB) // MIB
        704
        >>> save_headroom("guard.weights.h5", 576 * MIB, 64 * MIB) // MIB
        128
        >>> save_headroom(None, 576 * MIB, 64 * MIB)
        0
    """
    if path is None:
        return 0
    per_state, per_largest = SAVE_COST[".weights.h5" if path.endswith(".weights.h5") else ".keras"]
    return int(per_state * state_bytes + per_largest * largest_variable)


def temporary_path(path: str) -> str:
    """Where a save goes before it replaces ``path``: Keras's suffix kept at the end.

    Example:
        >>> temporary_path("ckpt/guard.keras"), temporary_path("guard.weights.h5")
        ('ckpt/guard.tmp.keras', 'guard.tmp.weights.h5')
    """
    suffix = ".weights.h5" if path.endswith(".weights.h5") else os.path.splitext(path)[1]
    return path[: len(path) - len(suffix)] + ".tmp" + suffix


@dataclass(frozen=True)
class Reading:
    """The guarded figures at one check, after ``batches`` batch hooks of the fit.

    Keys: ``process_tree``, ``used`` (the effective limit less what is available: it
    grows as available memory shrinks), ``gpu<i>`` (the figure ``max_gpu_memory`` is
    compared with).
    """

    batches: int
    figures: dict[str, int] = field(default_factory=dict)


def reading(snap: MemorySnapshot, batches: int) -> Reading:
    """The figures of ``snap`` whose growth the guard projects."""
    figures: dict[str, int] = {}
    if snap.process_tree is not None:
        figures["process_tree"] = snap.process_tree
    limit, available = snap.effective_limit, snap.effective_available
    if limit is not None and available is not None:
        figures["used"] = limit - available
    for gpu in snap.gpus:
        guarded = gpu.guarded
        if guarded is not None:
            figures[f"gpu{gpu.index}"] = guarded[1]
    return Reading(batches, figures)


def growth_per_batch(previous: Reading | None, now: Reading) -> dict[str, float] | None:
    """Bytes per batch each figure grew by since ``previous`` (0 where it shrank).

    ``None`` where no batch ran in between (two checks at one point): the caller keeps
    the rates it had.

    Example:
        >>> growth_per_batch(Reading(3, {"used": 10 * MIB}), Reading(5, {"used": 4 * MIB}))
        {'used': 0.0}
    """
    if previous is None or now.batches <= previous.batches:
        return None
    batches = now.batches - previous.batches
    return {
        key: max(0.0, (value - previous.figures[key]) / batches)
        for key, value in now.figures.items()
        if key in previous.figures
    }


@dataclass(frozen=True)
class Outlook:
    """What to do at a check: halt now (``crossings``), and when to check next.

    ``batches_to_check``: batches until the next check must come (1: every batch);
    ``None``: no growth threatens a bound, the configured cadence stands.
    """

    crossings: list[Crossing]
    batches_to_check: int | None


def outlook(
    bounds: Bounds,
    snap: MemorySnapshot,
    rates: dict[str, float],
    *,
    save: int = 0,
    extra_batches: int = 0,
) -> Outlook:
    """The bounds that the memory projected at the next check crosses, and the cadence.

    A bound counts as crossed *now* when the figure, grown at its rate for the next
    batch and for the ``extra_batches`` that run after a halt before training stops
    (``on_exceed="stop"``: Keras finishes the batch it was about to run), plus ``save``
    (what writing the checkpoint takes; host memory only), would cross it. Halting then
    leaves the room to save. The reserve is in ``Crossing.reserve``.

    The cadence: the next check must come while the room left holds ``GROWTH_SAFETY``
    times the growth until then; within ``NEAR_FRACTION`` of the limit of a bound, every
    batch. No growth and far from every bound: ``None``.

    Example:
        >>> outlook(bounds, snap_at_80_percent, {"used": 300 * MIB}, save=20 * MIB)
        Outlook(crossings=[Crossing('effective_available', ...)], batches_to_check=1)
    """
    ahead = 1 + extra_batches
    found: list[Crossing] = []
    checks: list[int] = []
    limit = snap.effective_limit

    def judge(metric: str, parameter: str, room: int, rate: float, value: int, bound: int) -> None:
        """``room``: bytes the figure may still grow by before it crosses ``bound``."""
        reserve = int(rate * ahead) + (save if not metric.startswith("gpu") else 0)
        if room - reserve < 0:
            found.append(Crossing(metric, parameter, value, bound, reserve=reserve))
            return
        left = room - reserve
        near = NEAR_FRACTION * (limit if limit is not None and not metric.startswith("gpu") else 0)
        if left < near:
            checks.append(1)
        elif rate > 0:
            checks.append(max(1, math.floor(left / (GROWTH_SAFETY * rate))))

    tree = snap.process_tree
    if bounds.max_process_memory is not None and tree is not None:
        bound = bounds.max_process_memory.resolve(limit)
        if bound is not None:
            rate = rates.get("process_tree", 0.0)
            judge("process_tree", "max_process_memory", bound - tree, rate, tree, bound)
    floor, available = available_floor(bounds, snap), snap.effective_available
    if floor is not None and available is not None:
        rate = rates.get("used", 0.0)
        judge("effective_available", floor[0], available - floor[1], rate, available, floor[1])
    for gpu in snap.gpus:
        guarded = gpu.guarded
        bound = gpu_bound(bounds, gpu.total, gpu.limit)
        if guarded is None or bound is None:
            continue
        parameter = "max_gpu_memory" if bounds.max_gpu_memory is not None else "the GPU's limit"
        metric, value = f"gpu{gpu.index}_{guarded[0]}", guarded[1]
        judge(metric, parameter, bound - value, rates.get(f"gpu{gpu.index}", 0.0), value, bound)
    return Outlook(found, min(checks) if checks else None)


def gpu_bound(bounds: Bounds, total: int | None, limit: int | None) -> int | None:
    """``max_gpu_memory``, else (a guard with no GPU bound) the allocator's limit less a floor.

    The allocator runs out at its own pool's limit where the framework has one (JAX
    preallocates 75%, ``configure_gpus(memory_limit=...)``), else at the device's total.
    """
    if bounds.max_gpu_memory is not None:
        return bounds.max_gpu_memory.resolve(total)
    if not bounds.auto_floor:
        return None
    known = [v for v in (limit, total) if v is not None]
    if not known:
        return None
    cap = min(known)
    return cap - default_floor(cap)
