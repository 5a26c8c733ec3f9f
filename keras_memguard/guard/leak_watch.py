"""Leak detection at each epoch's end: the growth slope, its warning, and where it grows.

``LeakDetector`` (guard/policy.py) finds sustained growth; ``LeakTracer``
(guard/leaks.py, issue #16) names the lines that allocate it. ``LeakWatch`` runs both
for one fit and says what they found: a warning, the summary, a TensorBoard text.

Example:
    >>> watch = LeakWatch(warmup_epochs=1, threshold=parse_size("4MiB"), patience=3,
    ...                   trace=None, max_process_memory=None)
    >>> slope = watch.epoch_end(epoch, snapshot(), guard.summary, write_text)
    >>> watch.close()
"""

from __future__ import annotations

import tracemalloc
import warnings
from collections.abc import Callable

from keras_memguard.errors import MemGuardWarning
from keras_memguard.guard.growth import GrowthReport
from keras_memguard.guard.growth_probe import GrowthProbe, current_rss
from keras_memguard.guard.leaks import LeakReport, LeakTracer
from keras_memguard.guard.policy import LeakDetector, MemGuardSummary, epochs_until
from keras_memguard.memory_snapshot import MIB, MemorySnapshot
from keras_memguard.sizes import Size, format_bytes

__all__ = ["LeakWatch"]


class LeakWatch:
    """One fit's leak detection and, where growth is suspected, its allocation tracing.

    Args:
        warmup_epochs: epochs ignored.
        threshold: growth per epoch that counts as leaking.
        patience: epochs the growth must persist before the warning.
        trace: ``None`` (trace once growth is suspected), ``True`` or ``False``.
        max_process_memory: the bound the warning says the growth will reach.
    """

    def __init__(
        self,
        warmup_epochs: int,
        threshold: Size,
        patience: int,
        trace: bool | None,
        max_process_memory: Size | None,
    ) -> None:
        self.threshold, self.patience = threshold, patience
        self.max_process_memory = max_process_memory
        self.detector = LeakDetector(warmup_epochs, (threshold.bytes or 0) / MIB, patience)
        self.tracer = LeakTracer(trace, warmup_epochs=warmup_epochs)
        # issue #27: evidence of the kind of growth, gathered in the traced epochs
        self.probe = GrowthProbe(max((threshold.bytes or 0) / 2, 2**18), self.tracer.epochs)
        self.own_change = 0  # what the guard's own epoch-end work did to RSS (signed)
        self.tracing_cost = 0  # the most tracemalloc's own traces have held in this fit

    def close(self) -> None:
        """Stops tracing (at train end, or for a fit that raised)."""
        self.tracer.close()
        self.probe.close()  # issue #27

    def epoch_end(
        self,
        epoch: int,
        snap: MemorySnapshot,
        summary: MemGuardSummary,
        write_text: Callable[[str, str, int], None],
    ) -> float | None:
        """One epoch's figure; returns the growth slope (MiB/epoch) once it is known."""
        slope, warn = None, False
        if tracemalloc.is_tracing():
            self.tracing_cost = max(self.tracing_cost, tracemalloc.get_tracemalloc_memory())
        if snap.process_tree is not None:
            # The guard's own epoch-end work is not the user's growth: what its collections
            # gave back would read as a drop (breaking a real leak's streak), what its
            # snapshots left in the heap (~4 MiB when a trace ends) and what tracing holds
            # as a rise (a false warning in a healthy run): both counted out. What the
            # probe's trims give back within a window is not (the next epoch takes those
            # pages again); its first trim, returning what was freed before, is.
            tree = snap.process_tree - self.own_change - self.tracing_cost
            slope, warn = self.detector.update(epoch, tree / MIB)
        self._locate(epoch, summary, write_text, warned=warn)  # issue #16
        if slope is None:
            return None
        summary.leak_slope_mib_per_epoch = slope
        if warn:
            message = self.message(epoch, slope, snap)
            if summary.growth is not None:  # issue #27: the kinds of growth
                message += f" Kinds of growth: {summary.growth.headline()}."
            message += self.tracer.warning_suffix()  # issue #16: the top site
            warnings.warn(message, MemGuardWarning, stacklevel=3)
        return slope

    def _locate(
        self,
        epoch: int,
        summary: MemGuardSummary,
        write_text: Callable[[str, str, int], None],
        warned: bool,
    ) -> None:
        """Issue #16: one tracer step; a finished report goes to the summary and TensorBoard."""
        before = current_rss()  # a /proc read per epoch
        trimmed = self.probe.trims_gave_back
        self.probe.before_sample(epoch)  # issue #27: before the tracer samples
        report: LeakReport | None = self.tracer.epoch_end(epoch, suspected=self.detector.streak > 0)
        growth = self._classify(epoch, report, summary, write_text)  # issue #27
        after = current_rss() if before is not None else None
        if before is not None and after is not None:
            # A trim returns free pages the next epoch takes again: not the guard's change.
            self.own_change += after - before + (self.probe.trims_gave_back - trimmed)
        if report is None or not (report.sites or growth):
            return
        if report.sites:
            summary.leak_sites = list(report.sites)
            write_text("memory/leak_sites", report.markdown(), epoch)
        if not warned:  # the growth warning, when it comes now, names the top site itself
            found = "\n".join(
                str(part) for part in (report if report.sites else None, growth) if part
            )
            warnings.warn(f"keras-memguard: {found}", MemGuardWarning, stacklevel=4)

    def _classify(
        self,
        epoch: int,
        report: LeakReport | None,
        summary: MemGuardSummary,
        write_text: Callable[[str, str, int], None],
    ) -> GrowthReport | None:
        """Issue #27: the probe's step at a traced epoch end; a report naming kinds goes
        to the summary and TensorBoard. Returns it the first time in a fit, else ``None``.
        """
        if report is None:
            if self.tracer.tracing:
                self.probe.after_sample(epoch)
            return None
        growth = self.probe.finish(epoch, report)
        if growth is None or not growth.kinds:
            return None
        first = summary.growth is None
        summary.growth = growth  # a retried trace's report replaces it, warned once
        write_text("memory/growth", growth.markdown(), epoch)
        return growth if first else None

    def message(self, epoch: int, slope: float, snap: MemorySnapshot) -> str:
        """The growth warning: the slope, and when it reaches the bound at this rate."""
        size = self.max_process_memory
        bound = size.resolve(snap.effective_limit) if size else snap.effective_limit
        message = (
            f"keras-memguard: process memory grows by {slope:.1f} MiB/epoch "
            f"(above {self.threshold} for {self.patience} epochs)"
        )
        left = epochs_until(bound, snap.process_tree, slope)
        if left is not None:
            name = "max_process_memory" if size else "the effective memory limit"
            message += (
                f"; at this rate it reaches {name} ({format_bytes(bound)}) around epoch "
                f"{epoch + left}"
            )
        return message + "."
