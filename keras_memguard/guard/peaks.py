"""The peaks of one phase (an epoch, an ``evaluate()``) and of the run, from each sample.

Pure bookkeeping: ``MemGuardCallback`` adds every snapshot it takes, writes the phase's
figures at epoch end, and the run's land in its ``MemGuardSummary``.

Example:
    >>> peaks = PhasePeaks()
    >>> peaks.add(snapshot(), guard.summary)
    >>> sorted(peaks.metrics())
    ['effective_available_min_mib', 'process_tree_peak_mib']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from keras_memguard.guard.policy import MemGuardSummary, gpu_peaks_since_check, mib
from keras_memguard.memory_snapshot import MemorySnapshot, reset_gpu_peaks, snapshot

__all__ = ["PhasePeaks", "Sampler"]


@dataclass
class PhasePeaks:
    """The highest process tree, the lowest available memory and each GPU's peak."""

    tree: int | None = None
    min_available: int | None = None
    gpu: dict[int, int] = field(default_factory=dict)

    def add(self, snap: MemorySnapshot, summary: MemGuardSummary) -> None:
        """One sample: this phase's peaks and the run's (in ``summary``) move with it."""
        tree, available = snap.process_tree, snap.effective_available
        if tree is not None:
            self.tree = _extreme(max, self.tree, tree)
            summary.peak_process_tree = _extreme(max, summary.peak_process_tree, tree)
        if available is not None:
            self.min_available = _extreme(min, self.min_available, available)
            summary.min_effective_available = _extreme(
                min, summary.min_effective_available, available
            )
        for gpu in snap.gpus:
            guarded = gpu.guarded  # the figure max_gpu_memory is compared with
            if guarded is not None:
                peak_gpu = summary.peak_gpu
                peak_gpu[gpu.index] = max(peak_gpu.get(gpu.index, 0), guarded[1])
            peak = gpu.allocated_peak if gpu.allocated_peak is not None else gpu.allocated
            if peak is not None:
                self.gpu[gpu.index] = max(self.gpu.get(gpu.index, 0), peak)

    def metrics(self) -> dict[str, float]:
        """The phase's figures in MiB under their logged keys (NaN where unknown)."""
        metrics = {
            "process_tree_peak_mib": mib(self.tree),
            "effective_available_min_mib": mib(self.min_available),
        }
        for index, peak in self.gpu.items():
            metrics[f"gpu{index}_allocated_peak_mib"] = mib(peak)
        return metrics


class Sampler:
    """The guard's samples: each snapshot's GPU peaks are the peaks since the previous one.

    Not pure: it reads memory and resets the allocator's peaks where the framework allows
    (which resets them for the user's own code too, see docs/callback.md).

    Example:
        >>> sampler = Sampler()
        >>> snap = sampler.sample(guard.summary)
    """

    def __init__(self) -> None:
        self.peaks = PhasePeaks()
        self.gpu_peaks_seen: dict[int, int] = {}

    def new_phase(self) -> None:
        """A phase starts: its peaks afresh, the allocator's peaks reset where possible."""
        self.peaks = PhasePeaks()
        reset_gpu_peaks()
        # A peak that cannot be reset counts only once it rises above today's.
        _, self.gpu_peaks_seen = gpu_peaks_since_check(snapshot().gpus, {})

    def sample(self, summary: MemGuardSummary, temporaries: int | None = None) -> MemorySnapshot:
        """A snapshot now; this phase's and the run's peaks move with it.

        ``temporaries``: the compiled step's, where known, for a peak that cannot be
        reset (``policy.gpu_peaks_since_check``).
        """
        snap = snapshot()
        gpus, self.gpu_peaks_seen = gpu_peaks_since_check(
            snap.gpus, self.gpu_peaks_seen, temporaries
        )
        if any(gpu.peak_resettable for gpu in snap.gpus):
            reset_gpu_peaks()  # the next sample's peak is the peak since this one
        snap = replace(snap, gpus=gpus)
        self.peaks.add(snap, summary)
        return snap


def _extreme(pick: Callable[[int, int], int], current: int | None, value: int) -> int:
    return value if current is None else pick(current, value)
