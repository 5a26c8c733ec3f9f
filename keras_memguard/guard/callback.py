"""``MemGuardCallback``: memory in TensorBoard and ``logs``, and a clean stop before OOM.

Logged keys (TensorBoard tags are ``memory/<key>`` in the run ``<log_dir>/memory``; the
Keras ``logs`` get a short subset, see ``LOG_KEYS``) are documented with their units in
docs/metrics.md. Every key ends in its unit: ``_mib`` (MiB), ``_percent``, ``_s``.

The same bounds are checked in every phase: training batches, the validation pass
inside ``fit``, ``evaluate()`` and ``predict()``. The checks run in the batch-*begin*
hooks: Keras (JAX, PyTorch) runs batch-end hooks asynchronously only where no callback
overrides them without being thread safe, and waiting for every step's logs costs
throughput (docs/callback.md).

Example:
    >>> guard = MemGuardCallback(log_dir="logs", max_process_memory="80%",
    ...                          checkpoint_path="checkpoints/guard.keras")
    >>> model.fit(train, epochs=20, callbacks=[guard])
    >>> print(guard.summary)
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from typing import Any

import keras

from keras_memguard.backends.base import current_backend, tensorflow_kept_out
from keras_memguard.errors import (
    MemGuardWarning,
    MemoryLimitExceededError,
    invalid_argument,
    positive_int,
    warn_once,
)
from keras_memguard.guard import fits
from keras_memguard.guard.distributed import WorkerContext, worker_context
from keras_memguard.guard.growth import GrowthReport
from keras_memguard.guard.growth_probe import GrowthProbe
from keras_memguard.guard.leaks import LeakReport, LeakTracer
from keras_memguard.guard.policy import (
    Bounds,
    Halt,
    LeakDetector,
    MemGuardSummary,
    bounds_mib,
    crossings,
    epochs_until,
    gpu_peaks_since_check,
    gpus_without_total,
    is_low_memory,
    mib,
    train_end_release,
)
from keras_memguard.guard.release import release_memory
from keras_memguard.guard.tensorboard import EventWriter
from keras_memguard.memory_snapshot import MIB, MemorySnapshot, reset_gpu_peaks, snapshot
from keras_memguard.probes import nvml
from keras_memguard.sizes import Size, format_bytes, parse_size

__all__ = ["LOG_KEYS", "Halt", "MemGuardCallback", "MemGuardSummary", "memory_layout"]

ON_EXCEED = ("stop", "raise", "warn")
PREFIX = "memory/"
# The keys added to Keras `logs` at each epoch end (History, CSVLogger, progress bar,
# and keras.callbacks.TensorBoard's `epoch_<key>`), plus `memory/gpu<i>_allocated_peak_mib`
# for each GPU. Few on purpose: every key lands in all of those places.
LOG_KEYS = ("memory/process_tree_peak_mib",)
# With several workers, checks happen on batch counts (the same step on every worker).
MULTI_WORKER_CHECK_EVERY = 10


def _optional_size(value: Any, name: str, allow_fraction: bool = True) -> Size | None:
    return None if value is None else parse_size(value, name=name, allow_fraction=allow_fraction)


def _check_checkpoint_path(path: str | os.PathLike[str] | None) -> str | None:
    """What a halt will write, checked now: a bad path found only at a halt loses the model.

    A plain ``.h5`` is refused although ``model.save`` accepts it: that legacy HDF5
    format cannot save a subclassed model, which would surface only at halt time.
    """
    if path is None:
        return None
    path = os.fspath(path)
    if not path.endswith((".keras", ".weights.h5")):
        why = ""
        if path.endswith(".h5"):
            why = (
                "a plain '.h5' is Keras's legacy whole-model format, which cannot save "
                "subclassed models; use 'name.keras' for the model or 'name.weights.h5' "
                "for its weights"
            )
        raise invalid_argument(
            "checkpoint_path",
            path,
            "a file path ending in '.keras' (whole model) or '.weights.h5' (weights only)",
            why,
        )
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise invalid_argument(
            "checkpoint_path",
            path,
            f"a path whose directory can be created and written ({parent!r} is not a "
            "writable directory)",
        )
    return path


class MemGuardCallback(keras.callbacks.Callback):
    """Logs memory to TensorBoard and ``logs``; stops training before memory runs out.

    With no arguments it logs, warns when less than 10% of the effective memory limit
    is available, and halts (as `on_exceed` says) only as a last resort, when less than
    `emergency_available_memory` (2%) is left: at that point the OOM killer is seconds
    away, and a graceful stop that keeps the model beats a SIGKILL that loses it.

    Fractions (`0.8`, `"80%"`) are of the *effective limit*: the smaller of the
    machine's RAM and the container's cgroup limit.

    Args:
        log_dir: TensorBoard directory; the guard writes the run `<log_dir>/memory`,
            beside `keras.callbacks.TensorBoard`'s `train/` and `validation/`.
            Defaults to `None` (no TensorBoard output).
        max_process_memory: bound on this process tree: its RSS plus its child
            processes' private memory (pages shared with forked workers count once,
            as the kernel charges them). Defaults to `None`.
        min_available_memory: floor on the machine's / container's available memory.
            Defaults to `None`.
        max_gpu_memory: per-GPU bound, a fraction of each GPU's total or bytes; compared
            with the framework allocator's peak since the previous check (the in-step
            peak is what runs a GPU out), else its live bytes, else NVML's figure for
            this process. A fraction needs the GPU's total (NVML, or the framework's
            own limit). Defaults to `None`.
        on_exceed: `"stop"` (save, then `model.stop_training = True`: Keras finishes
            the batch it was about to run, and the checkpoint is saved again after it),
            `"raise"` (save, then raise `MemoryLimitExceededError` before that batch) or
            `"warn"`. In `evaluate()` and
            `predict()`, `"stop"` raises too: a truncated result would mislead.
            Defaults to `"stop"`.
        checkpoint_path: where the model is saved before a halt (`.keras` for the whole
            model, `.weights.h5` for weights). Defaults to `None` (nothing saved).
        check_interval: seconds between threshold checks during an epoch; one check
            costs about 100 µs, so the default costs < 0.1% of a step. Defaults to `0.1`.
        check_every_n_batches: check every N batch-begin hooks instead of by time. With
            `steps_per_execution > 1`, Keras calls batch hooks once per execution.
            Defaults to `None`.
        log_every_n_batches: also write `memory_batch/<key>` scalars every N batches.
            Defaults to `None`.
        add_to_logs: add `memory/process_tree_peak_mib` and, per GPU,
            `memory/gpu<i>_allocated_peak_mib` to each epoch's `logs` (only these: each
            key appears in the progress bar, `History`, `CSVLogger`, and Keras's
            `TensorBoard` copies it into `train/` as `epoch_<key>`). Callbacks listed
            *before* this one in `callbacks=[...]` do not see them. `None` adds them
            only where the guard writes no `memory` run (no `log_dir`, or one it cannot
            write): that run already charts them, and a second copy in `train/` would
            clutter TensorBoard. Defaults to `None`.
        leak_warmup_epochs: epochs ignored by leak detection. Defaults to `1`.
        leak_threshold: growth per epoch above which memory counts as leaking.
            Defaults to `"4MiB"`.
        leak_patience: epochs the growth must persist before the warning.
            Defaults to `3`.
        trace_leaks: where the growing memory is allocated (docs/leaks.md). `None`:
            trace allocations for a few epochs once growth is suspected, then name the
            top sites (`file:line`) in the warning, the summary and TensorBoard; `True`:
            trace right after `leak_warmup_epochs`, even without growth; `False`:
            never. Defaults to `None`.
        emergency_available_memory: last-resort floor applied when
            `min_available_memory` is not given; `None` disables it. Defaults to `"2%"`.
        release_on_train_end: collect garbage when training ends: a full
            `gc.collect()`, `malloc_trim` and (PyTorch) `torch.cuda.empty_cache()` only
            where it can matter (the process tree grew during the fit by more than
            max(64 MiB, 5%), or available memory is low), else a young-generation
            collection and `malloc_trim`, so a loop of short fits does not pay ~0.2 s
            each (see `policy.train_end_release`). Defaults to `True`.
        verbose: `1` prints the summary at train end. Quiet by default, like Keras's
            own callbacks (`EarlyStopping`, `ModelCheckpoint`); a halt is always printed,
            as `TerminateOnNaN` prints its stop. Defaults to `0`.

    Attributes:
        summary: the last run's `MemGuardSummary` (an attribute, like `History.history`
            and `EarlyStopping.stopped_epoch`, reset at each `fit`); `print(guard.summary)`
            shows it, and `guard.summary()` prints it too, as `model.summary()` does.
        last_snapshot: the latest `MemorySnapshot` the guard took.

    Raises:
        ValueError: a bad argument, named in the message.

    Example:
        >>> guard = MemGuardCallback(log_dir="logs", max_process_memory="12GiB",
        ...                          checkpoint_path="guard.keras")
        >>> model.fit(x, y, epochs=5, callbacks=[guard])
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        max_process_memory: int | float | str | None = None,
        min_available_memory: int | float | str | None = None,
        max_gpu_memory: int | float | str | None = None,
        on_exceed: str = "stop",
        checkpoint_path: str | os.PathLike[str] | None = None,
        *,
        check_interval: float = 0.1,
        check_every_n_batches: int | None = None,
        log_every_n_batches: int | None = None,
        add_to_logs: bool | None = None,
        leak_warmup_epochs: int = 1,
        leak_threshold: int | str = "4MiB",
        leak_patience: int = 3,
        trace_leaks: bool | None = None,
        emergency_available_memory: int | float | str | None = "2%",
        release_on_train_end: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__()
        if on_exceed not in ON_EXCEED:
            raise invalid_argument(
                "on_exceed", on_exceed, f"one of {', '.join(map(repr, ON_EXCEED))}"
            )
        if (
            isinstance(check_interval, bool)
            or not isinstance(check_interval, (int, float))
            or (not math.isfinite(check_interval) or check_interval < 0)
        ):
            raise invalid_argument("check_interval", check_interval, "seconds as a number >= 0")
        if (
            isinstance(leak_warmup_epochs, bool)
            or not isinstance(leak_warmup_epochs, int)
            or (leak_warmup_epochs < 0)
        ):
            raise invalid_argument("leak_warmup_epochs", leak_warmup_epochs, "an int >= 0")
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        self.max_process_memory = _optional_size(max_process_memory, "max_process_memory")
        self.min_available_memory = _optional_size(min_available_memory, "min_available_memory")
        self.max_gpu_memory = _optional_size(max_gpu_memory, "max_gpu_memory")
        _check_gpu_fraction_has_totals(self.max_gpu_memory)
        self.emergency_available_memory = _optional_size(
            emergency_available_memory, "emergency_available_memory"
        )
        self.leak_threshold = parse_size(
            leak_threshold, name="leak_threshold", allow_fraction=False
        )
        self.on_exceed = on_exceed
        self.checkpoint_path = _check_checkpoint_path(checkpoint_path)
        self.check_interval = float(check_interval)
        self.check_every_n_batches = positive_int(
            check_every_n_batches, "check_every_n_batches", allow_none=True
        )
        self.log_every_n_batches = positive_int(
            log_every_n_batches, "log_every_n_batches", allow_none=True
        )
        self.leak_patience = positive_int(leak_patience, "leak_patience") or 1
        self.leak_warmup_epochs = leak_warmup_epochs
        if trace_leaks not in (None, True, False):
            raise invalid_argument("trace_leaks", trace_leaks, "None (auto), True or False")
        self.trace_leaks = trace_leaks
        self._tracer: LeakTracer | None = None
        self.add_to_logs = None if add_to_logs is None else bool(add_to_logs)
        self.release_on_train_end = bool(release_on_train_end)
        self.verbose = verbose
        self.bounds = Bounds(
            max_process_memory=self.max_process_memory,
            min_available_memory=self.min_available_memory,
            max_gpu_memory=self.max_gpu_memory,
            emergency_available_memory=self.emergency_available_memory,
        )
        self.summary = MemGuardSummary()
        self.last_snapshot: MemorySnapshot | None = None
        self._writer: Any = None
        self._in_fit = False
        self._reset_run_state()

    # ----------------------------------------------------------------- run state
    def _reset_run_state(self) -> None:
        self.summary = MemGuardSummary()
        self._epoch: int | None = 0
        self._global_batch = 0
        self._leak = LeakDetector(
            self.leak_warmup_epochs, (self.leak_threshold.bytes or 0) / MIB, self.leak_patience
        )
        # issue #16: one allocation tracer per fit (a fit that raised may have left one)
        previous: LeakTracer | None = getattr(self, "_tracer", None)
        if previous is not None:
            previous.close()
        self._tracer = LeakTracer(self.trace_leaks, warmup_epochs=self.leak_warmup_epochs)
        self._close_growth_probe()  # issue #27: evidence of the kind of growth, per fit
        floor = max((self.leak_threshold.bytes or 0) / 2, 2**18)
        self._growth_probe = GrowthProbe(floor, epochs=self._tracer.epochs)
        self._halted = False
        self._halted_epoch: int | None = None
        self._save_again = False
        self._step_marker: Any = None  # JAX: an output of the step last seen dispatched
        self._over: set[str] = set()  # bounds currently crossed (warn mode, low memory)
        self._log_keys: list[str] | None = None
        self._adding_to_logs = bool(self.add_to_logs)
        self._workers = WorkerContext()
        self._check_every = self.check_every_n_batches
        self._phase = "train"
        self._phase_halted = False
        self._batches_since_check = 0
        self._last_check = float("-inf")
        self._epoch_peak_tree: int | None = None
        self._epoch_min_available: int | None = None
        self._epoch_gpu_peaks: dict[int, int] = {}
        self._gpu_peaks_seen: dict[int, int] = {}

    def _reset_phase(self, phase: str) -> None:
        """A phase (an epoch's training, evaluate, predict) starts: its cadence and peaks.

        The allocator's peaks are reset where the framework allows (this resets them
        for the user's own code too, see docs/callback.md).
        """
        self._phase = phase
        self._phase_halted = False
        self._batches_since_check = 0
        self._last_check = float("-inf")
        self._epoch_peak_tree = None
        self._epoch_min_available = None
        self._epoch_gpu_peaks = {}
        reset_gpu_peaks()
        # A peak that cannot be reset counts only once it rises above today's.
        _, self._gpu_peaks_seen = gpu_peaks_since_check(snapshot().gpus, {})

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._end_stale_fit()  # a guard reused after a fit that raised
        self._reset_run_state()
        self._in_fit = True
        self._reset_phase("train")
        self._workers = worker_context(self.model)
        if self._workers.multi_worker and self._check_every is None:
            self._check_every = MULTI_WORKER_CHECK_EVERY
        snap = self._sample()
        self.summary.start_process_tree = snap.process_tree
        self._warn_unbounded_gpus(snap)
        self._open_writer([gpu.index for gpu in snap.gpus])
        if self.add_to_logs is None:
            self._adding_to_logs = self._writer is None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._reset_phase("train")

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._global_batch += 1
        log_due = (
            self.log_every_n_batches is not None
            and self._global_batch % self.log_every_n_batches == 0
        )
        self._batch_check(batch, log_due)

    def _batch_check(self, batch: int, log_due: bool = False) -> None:
        """The check of every phase, before a batch: by batch count or time, as configured."""
        if self._phase == "validation" and self._workers.multi_worker:
            return  # one worker stopping its validation alone would stall the others
        self._batches_since_check += 1
        if self._check_every is not None:
            due = self._batches_since_check >= self._check_every
        else:
            due = time.monotonic() - self._last_check >= self.check_interval
        if not (due or log_due):
            return
        self._wait_for_dispatched_steps()
        snap = self._sample()
        if log_due:
            self._write_scalars("memory_batch/", snap.metrics(), self._global_batch)
        if due:
            self._batches_since_check = 0
            self._check(snap, batch)

    def _wait_for_dispatched_steps(self, all_of_them: bool = False) -> None:
        """On JAX, waits for dispatched steps, so that a check sees their memory.

        Keras's JAX loop dispatches steps without waiting for them (tens of steps ahead
        when nothing reads their results). A check waits for the steps dispatched up
        to the previous check: the memory it reads lags by at most one check interval
        (one batch with ``check_every_n_batches=1``), and the pipeline never drains.
        ``all_of_them`` waits for every step (once per epoch, before validation).
        """
        backend = current_backend(keras.backend.backend())
        self._step_marker = backend.wait_for_steps(self._model, self._step_marker, all_of_them)

    # ------------------------------------------- validation, evaluate(), predict()
    def _fit_is_running(self) -> bool:
        """Whether a ``fit`` of this guard's model is on the call stack now.

        Keras skips ``on_train_end`` when ``fit`` raises (Ctrl-C, an OOM, another
        callback's error), so "in a fit" cannot be a flag that only ``on_train_end``
        clears: a later ``evaluate()`` would pass for that fit's validation pass and
        return a truncated result instead of raising.
        """
        frame: Any = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is self.model:
                return True
            frame = frame.f_back
        return False

    def _end_stale_fit(self) -> None:
        """Closes what a fit that raised left open: its writer, its run, its tracer."""
        self._in_fit = False
        tracer = getattr(self, "_tracer", None)
        if tracer is not None:
            tracer.close()
        self._close_growth_probe()  # issue #27
        self.__dict__.pop("_fit", None)
        self._close_writer()

    def _still_in_fit(self) -> bool:
        """Whether a fit is running now; if the one marked running raised, ends it."""
        if self._in_fit and not self._fit_is_running():
            self._end_stale_fit()
        return self._in_fit

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._still_in_fit():
            self._save_after_last_step()
            # The epoch's last training batch ran after the last check (at its begin):
            # check it before validation. Every worker reaches this hook: votes are safe.
            self._wait_for_dispatched_steps(all_of_them=True)
            self._check(self._sample(), None)
            # The validation pass: keep the training epoch's peaks, check the same bounds.
            self._phase = "validation"
            self._batches_since_check = 0
            if self._halted:
                # Keras validates after a halt; stop it after its first batch (the
                # earliest Keras allows), and keep its partial val_* out of `logs`.
                self.model.stop_evaluating = True
            return
        self._begin_standalone("evaluate")

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._phase_halted or (self._in_fit and self._halted):
            self._model_for_flags.stop_evaluating = True
            return
        self._batch_check(batch)

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._begin_standalone("predict")

    def on_predict_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._phase_halted:
            self._model_for_flags.stop_predicting = True
            return
        self._batch_check(batch)

    def on_predict_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._in_fit:
            self._phase = "train"  # a predict() inside fit is over: training goes on

    def _begin_standalone(self, phase: str) -> None:
        """``evaluate()`` or ``predict()`` outside ``fit``: the summary's halts go on.

        Called from inside ``fit`` (a callback predicting on samples, say), it checks
        the same bounds and keeps the epoch's peaks.
        """
        if self._still_in_fit():
            self._phase, self._batches_since_check = phase, 0
            return
        self._epoch = None
        self._workers = WorkerContext()
        self._check_every = self.check_every_n_batches
        self._reset_phase(phase)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._save_after_last_step()
        self._phase = "train"
        snap = self._sample()
        metrics = snap.metrics()
        metrics["process_tree_peak_mib"] = mib(self._epoch_peak_tree)
        metrics["effective_available_min_mib"] = mib(self._epoch_min_available)
        for index, peak in self._epoch_gpu_peaks.items():
            metrics[f"gpu{index}_allocated_peak_mib"] = mib(peak)
        metrics.update(bounds_mib(self.bounds, snap))
        slope = self._update_leak(epoch, snap)
        if slope is not None:
            metrics["leak_slope_mib_per_epoch"] = slope
        metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
        self._write_scalars(PREFIX, metrics, epoch)
        if logs is not None and self._halted_epoch == epoch:
            # Validation after (or cut short by) a halt covers a batch or so: a val_loss
            # from it would mislead EarlyStopping and ModelCheckpoint(save_best_only).
            # NaN, not deletion: Keras's ModelCheckpoint saves unconditionally when its
            # monitor is missing, while NaN is never an improvement.
            for key in [k for k in logs if k.startswith("val_")]:
                logs[key] = float("nan")
        if self._adding_to_logs and logs is not None:
            self._add_to_logs(logs, metrics, snap)
        self.summary.epochs += 1
        self._check(snap, None)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._in_fit = False
        if self._tracer is not None:
            self._tracer.close()  # issue #16
        self._close_growth_probe()  # issue #27
        if self.release_on_train_end:
            # A full release only where it can matter (see train_end_release). The cheap
            # one also keeps PyTorch's cached GPU blocks: a next fit would take them back.
            reason = train_end_release(self.summary.start_process_tree, self._sample())
            full = reason is not None
            self.summary.release = release_memory(generation=2 if full else 1, empty_cache=full)
        snap = self._sample()
        self.summary.end_process_tree = snap.process_tree
        fit = self.__dict__.pop("_fit", None)  # this fit's point in the memory_fits run
        if fit is not None and self.log_dir is not None:
            fits.end(self.log_dir, fit, self.summary)
        self._close_writer()
        if self.verbose:
            print(self.summary, file=sys.stderr)

    # ------------------------------------------------------------------ sampling
    def _sample(self) -> MemorySnapshot:
        snap = snapshot()
        gpus, self._gpu_peaks_seen = gpu_peaks_since_check(snap.gpus, self._gpu_peaks_seen)
        if any(gpu.peak_resettable for gpu in snap.gpus):
            reset_gpu_peaks()  # the next sample's peak is the peak since this one
        snap = replace(snap, gpus=gpus)
        self.last_snapshot = snap
        self._last_check = time.monotonic()
        summary = self.summary
        tree, available = snap.process_tree, snap.effective_available
        if tree is not None:
            self._epoch_peak_tree = _extreme(max, self._epoch_peak_tree, tree)
            summary.peak_process_tree = _extreme(max, summary.peak_process_tree, tree)
        if available is not None:
            self._epoch_min_available = _extreme(min, self._epoch_min_available, available)
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
                peaks = self._epoch_gpu_peaks
                peaks[gpu.index] = max(peaks.get(gpu.index, 0), peak)
        return snap

    def _warn_unbounded_gpus(self, snap: MemorySnapshot) -> None:
        """A fractional GPU bound without a total is no bound: say so, loudly, once."""
        missing = gpus_without_total(self.bounds, snap)
        if missing:
            warnings.warn(
                f"keras-memguard: max_gpu_memory={self.max_gpu_memory} is DISABLED for GPU(s) "
                f"{missing}: their total memory is unknown (no NVML, and the framework "
                "reports no limit). Give the bound in bytes, e.g. max_gpu_memory='12GiB', "
                "or install nvidia-ml-py.",
                MemGuardWarning,
                stacklevel=3,
            )

    # ---------------------------------------------------------------- thresholds
    def _check(self, snap: MemorySnapshot, batch: int | None) -> None:
        if self._phase_halted or (self._in_fit and self._halted):
            return
        self._warn_low_memory(snap)
        found = crossings(self.bounds, snap)
        self._over &= {c.metric for c in found} | {"low-memory"}
        if self.on_exceed == "warn":
            for crossing in found:
                if crossing.metric not in self._over:
                    self._over.add(crossing.metric)
                    halt = Halt(
                        crossing.metric,
                        crossing.value,
                        crossing.bound,
                        self._epoch,
                        batch,
                        "warn",
                        None,
                        self._phase,
                    )
                    self.summary.halts.append(halt)
                    warnings.warn(
                        f"keras-memguard: {halt.describe()} ({crossing.parameter}); "
                        f"{'training' if self._in_fit else self._phase} continues because "
                        "on_exceed='warn'.",
                        MemGuardWarning,
                        stacklevel=2,
                    )
            return
        # Every worker votes at this same step, so that all stop together or none does
        # (outside fit, each process decides alone).
        voted = self._workers.any_worker(bool(found)) if self._in_fit else bool(found)
        if not voted:
            return
        if found:
            metric, parameter, value, bound = (
                found[0].metric,
                found[0].parameter,
                found[0].value,
                found[0].bound,
            )
        else:
            metric, parameter, value, bound = ("another_worker", "a bound on another worker", 0, 0)
        self._halt(
            Halt(metric, value, bound, self._epoch, batch, self.on_exceed, None, self._phase),
            parameter,
            snap,
        )

    def _warn_low_memory(self, snap: MemorySnapshot) -> None:
        low = is_low_memory(snap)
        if low and "low-memory" not in self._over:
            self._over.add("low-memory")
            warnings.warn(
                f"keras-memguard: only {format_bytes(snap.effective_available)} of "
                f"{format_bytes(snap.effective_limit)} is available; set max_process_memory "
                "or min_available_memory to stop cleanly before the OOM killer acts.",
                MemGuardWarning,
                stacklevel=2,
            )
        elif low is False:
            self._over.discard("low-memory")

    def _halt(self, halt: Halt, parameter: str, snap: MemorySnapshot) -> None:
        standalone = not self._in_fit
        self._phase_halted = True
        if standalone:
            # evaluate() / predict(): nothing was trained, so nothing to save; the caller
            # gets an error rather than truncated metrics or predictions.
            saved = None
            verb = "raising"
        else:
            self._halted = True
            self._halted_epoch = self._epoch
            saved = self._save_checkpoint()
            verb = "stopping training" if self.on_exceed == "stop" else "raising"
            # Halted before a training batch: Keras still runs that batch, then stops.
            # Saved now in case that batch fails; saved again once it is done, so the
            # checkpoint is the model fit returns (_save_after_last_step). Every worker
            # saves both times: saving may run collective ops.
            self._save_again = (
                self.checkpoint_path is not None
                and self.on_exceed == "stop"
                and halt.phase == "train"
                and halt.batch is not None
            )
        halt = replace(halt, checkpoint=saved)
        self.summary.halts.append(halt)
        line = f"keras-memguard: {verb}: {halt.describe()} ({parameter})"
        if saved:
            line += f"; model saved to {saved}"
        elif standalone:
            line += f"; {halt.phase}() gives no partial result"
        elif self.checkpoint_path is None:
            line += "; no checkpoint_path was given, so nothing was saved"
        elif not self._workers.is_chief:
            line += "; the chief worker keeps the checkpoint"
        print(line, file=sys.stderr, flush=True)
        self._write_text("memory/halt", line, self._epoch or 0)
        if self._phase == "validation":
            self.model.stop_evaluating = True
        if self.on_exceed == "raise" or standalone:
            if standalone:
                # JAX's evaluate() and predict() put the model's state back only when their
                # loop ends; reading self.model does it now, so the model stays usable.
                _ = self.model
            self._close_writer()
            self._in_fit = False  # fit ends here: on_train_end will not run
            raise MemoryLimitExceededError(
                line,
                snapshot=snap,
                metric=halt.metric,
                value=halt.value,
                bound=halt.bound,
                epoch=halt.epoch,
                batch=halt.batch,
            )
        self.model.stop_training = True

    @property
    def _model_for_flags(self) -> Any:
        """The model, for a stop flag: on JAX ``self.model`` also syncs its state."""
        return self._model if keras.backend.backend() == "jax" else self.model

    def _save_after_last_step(self) -> None:
        """The second save of a halt before a training batch: now that batch is done."""
        if not self._save_again:
            return
        self._save_again = False
        first = self.summary.halts[-1].checkpoint if self.summary.halts else None
        if first is None and not self._workers.multi_worker:
            return  # the first save failed, and said so loudly: no second message
        if self._save_checkpoint() is None and first is not None:
            print(
                f"keras-memguard: {first} holds the model from before the last batch.",
                file=sys.stderr,
                flush=True,
            )

    def _save_checkpoint(self) -> str | None:
        path = self.checkpoint_path
        if path is None:
            return None
        if not self._workers.is_chief:
            # Saving may run collective ops, so every worker saves; only the chief keeps it.
            scratch = tempfile.mkdtemp(prefix=f"memguard_worker{self._workers.index}_")
            path = os.path.join(scratch, os.path.basename(path))
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if path.endswith(".weights.h5"):
                self.model.save_weights(path)
            else:
                with tensorflow_kept_out():  # Keras's save imports TF when installed
                    self.model.save(path)
            if not self._workers.is_chief:
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
                return None
            return path
        except Exception as err:  # a halt must happen even when saving fails
            message = (
                f"keras-memguard: COULD NOT SAVE the checkpoint to {path}: {err}. Training "
                "halts anyway; the model is still in memory: save it from your script."
            )
            print(message, file=sys.stderr, flush=True)
            warnings.warn(message, MemGuardWarning, stacklevel=3)
            return None

    # ----------------------------------------------------------- leak detection
    def _update_leak(self, epoch: int, snap: MemorySnapshot) -> float | None:
        slope, warn = None, False
        if snap.process_tree is not None:
            slope, warn = self._leak.update(epoch, snap.process_tree / MIB)
        self._locate_leak(epoch, warned=warn)  # issue #16
        if slope is None:
            return None
        self.summary.leak_slope_mib_per_epoch = slope
        if warn:
            message = self._leak_message(epoch, slope, snap)
            if self.summary.growth is not None:  # issue #27: the kinds of growth
                message += f" Kinds of growth: {self.summary.growth.headline()}."
            if self._tracer is not None:
                message += self._tracer.warning_suffix()  # issue #16: the top site
            warnings.warn(message, MemGuardWarning, stacklevel=3)
        return slope

    def _locate_leak(self, epoch: int, warned: bool) -> None:
        """Issue #16: one tracer step; a finished report goes to the summary and TensorBoard."""
        if self._tracer is None:
            return
        self._growth_probe.before_sample(epoch)  # issue #27: before the tracer samples
        report: LeakReport | None = self._tracer.epoch_end(epoch, suspected=self._leak.streak > 0)
        growth = self._classify_growth(epoch, report)  # issue #27
        if report is None or not (report.sites or growth):
            return
        if report.sites:
            self.summary.leak_sites = list(report.sites)
            self._write_text("memory/leak_sites", report.markdown(), epoch)
        if not warned:  # the growth warning, when it comes now, names the top site itself
            found = "\n".join(
                str(part) for part in (report if report.sites else None, growth) if part
            )
            warnings.warn(f"keras-memguard: {found}", MemGuardWarning, stacklevel=4)

    # ------------------------------------------------ issue #27: kind of growth
    def _classify_growth(self, epoch: int, report: LeakReport | None) -> GrowthReport | None:
        """The probe's step at a traced epoch end; a report naming kinds is kept and written.

        Returns the report the first time one names kinds in this fit, else ``None``.
        """
        probe = self._growth_probe
        if report is None:
            if self._tracer is not None and self._tracer.tracing:
                probe.after_sample(epoch)
            return None
        growth = probe.finish(epoch, report)
        if growth is None or not growth.kinds:
            return None
        first = self.summary.growth is None
        self.summary.growth = growth  # a retried trace's report replaces it, warned once
        self._write_text("memory/growth", growth.markdown(), epoch)
        return growth if first else None

    def _close_growth_probe(self) -> None:
        probe: GrowthProbe | None = getattr(self, "_growth_probe", None)
        if probe is not None:
            probe.close()

    def _leak_message(self, epoch: int, slope: float, snap: MemorySnapshot) -> str:
        size = self.max_process_memory
        bound = size.resolve(snap.effective_limit) if size else snap.effective_limit
        message = (
            f"keras-memguard: process memory grows by {slope:.1f} MiB/epoch "
            f"(above {self.leak_threshold} for {self.leak_patience} epochs)"
        )
        left = epochs_until(bound, snap.process_tree, slope)
        if left is not None:
            name = "max_process_memory" if size else "the effective memory limit"
            message += (
                f"; at this rate it reaches {name} ({format_bytes(bound)}) around epoch "
                f"{epoch + left}"
            )
        return message + "."

    # --------------------------------------------------------------- TensorBoard
    def _open_writer(self, gpu_indices: list[int]) -> None:
        if self.log_dir is None or self._writer is not None:
            return
        try:
            run = "memory" if self._workers.is_chief else f"memory_worker{self._workers.index}"
            fit = fits.begin(self.log_dir, run)  # a run per fit or trial
            self._writer = EventWriter(os.path.join(self.log_dir, fit.run))
            self._fit = fit
            self._writer.custom_scalars_layout(memory_layout(gpu_indices))
        except Exception as err:
            self._writer = None
            warn_once(
                f"tensorboard-open:{self.log_dir}",
                f"keras-memguard cannot write TensorBoard logs to {self.log_dir!r}: {err}. "
                "Training continues without them.",
            )

    def _close_writer(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.close()
        except Exception as err:
            warn_once(
                "tensorboard-write", f"keras-memguard could not flush TensorBoard logs: {err}"
            )
        self._writer = None

    def _write_scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        try:
            for key, value in values.items():
                self._writer.scalar(prefix + key, value, step)
            self._writer.flush()
        except Exception as err:
            warn_once(
                "tensorboard-write",
                f"keras-memguard cannot write TensorBoard logs to {self.log_dir!r}: {err}. "
                "Training continues.",
            )

    def _write_text(self, tag: str, text: str, step: int) -> None:
        if self._writer is None:
            return
        try:
            self._writer.text(tag, text, step)
            self._writer.flush()
        except Exception as err:
            warn_once("tensorboard-write", f"keras-memguard cannot write TensorBoard logs: {err}")

    # --------------------------------------------------------------------- logs
    def _add_to_logs(
        self, logs: dict[str, Any], metrics: dict[str, float], snap: MemorySnapshot
    ) -> None:
        if self._log_keys is None:
            keys = list(LOG_KEYS)
            for gpu in snap.gpus:
                key = f"gpu{gpu.index}_allocated_peak_mib"
                if key in metrics:  # only where the framework's allocator reports
                    keys.append(PREFIX + key)
            self._log_keys = keys
        for key in self._log_keys:
            logs[key] = metrics.get(key[len(PREFIX) :], float("nan"))


def memory_layout(gpu_indices: list[int]) -> Any:
    """The custom-scalars layout: one chart per bound, with the bound as a line.

    The total limit stays out of the process chart, where it would flatten the usage curve.
    """
    from tensorboard.plugins.custom_scalar import layout_pb2

    def chart(title: str, regex: str) -> Any:
        return layout_pb2.Chart(
            title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex])
        )

    return layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title="keras-memguard",
                chart=[
                    chart(
                        "Process memory against its bound (MiB)",
                        r"memory/(process_tree_mib|process_tree_peak_mib|"
                        r"container_usage_mib|bound_process_mib)",
                    ),
                    chart(
                        "Available memory against its floor (MiB)",
                        r"memory/(effective_available_mib|effective_available_min_mib|"
                        r"bound_available_mib)",
                    ),
                    *(
                        chart(
                            f"GPU {i} memory against its bound (MiB)",
                            rf"memory/gpu{i}_(process|allocated|allocated_peak|reserved|bound)_mib",
                        )
                        for i in gpu_indices
                    ),
                ],
            )
        ]
    )


def _check_gpu_fraction_has_totals(size: Size | None) -> None:
    """A fractional ``max_gpu_memory`` where GPUs are set up and no total can be read."""
    if size is None or size.fraction is None or nvml.is_available():
        return
    devices = snapshot().gpus
    if devices and any(gpu.total is None for gpu in devices):
        raise invalid_argument(
            "max_gpu_memory",
            size.fraction,
            "bytes such as '12GiB' here",
            "a fraction needs each GPU's total: NVML (nvidia-ml-py) is not available and "
            "the framework reports no memory limit",
        )


def _extreme(pick: Any, current: int | None, value: int) -> int:
    return value if current is None else pick(current, value)
