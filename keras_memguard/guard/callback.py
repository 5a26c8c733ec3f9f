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
import sys
import threading
import time
import warnings
from dataclasses import replace
from typing import Any

import keras

from keras_memguard.backends.base import current_backend
from keras_memguard.errors import (
    MemGuardWarning,
    MemoryLimitExceededError,
    positive_int,
    warn_once,
)
from keras_memguard.guard import preflight as _preflight  # issue #25
from keras_memguard.guard.arguments import (
    ON_EXCEED,
    check_choice,
    check_gpu_fraction_has_totals,
    check_non_negative_int,
    check_seconds,
    optional_size,
)
from keras_memguard.guard.checkpoint import check_checkpoint_path, save_checkpoint
from keras_memguard.guard.distributed import ANOTHER_WORKER, WorkerContext, vote, worker_context
from keras_memguard.guard.evidence import EvidenceKeeper, check_evidence, evidence_directory
from keras_memguard.guard.halt import HaltState, calling_callback_list, fit_is_running
from keras_memguard.guard.headroom import (
    WARMUP_CHECKS,
    Reading,
    growth_per_batch,
    outlook,
    reading,
    save_headroom,
)
from keras_memguard.guard.leak_watch import LeakWatch
from keras_memguard.guard.leaks import LeakTracer
from keras_memguard.guard.peaks import Sampler
from keras_memguard.guard.policy import (
    Bounds,
    Crossing,
    Halt,
    MemGuardSummary,
    bounds_mib,
    gpus_without_total,
    is_low_memory,
    train_end_release,
)
from keras_memguard.guard.release import release_memory
from keras_memguard.guard.tensorboard import MemoryRunWriter, memory_layout
from keras_memguard.guard.watchdog import ON_STUCK, Watchdog, start_watchdog
from keras_memguard.memory_snapshot import MIB, MemorySnapshot
from keras_memguard.sizes import format_bytes, parse_size

__all__ = ["LOG_KEYS", "Halt", "MemGuardCallback", "MemGuardSummary", "memory_layout"]

PREFIX = "memory/"
# The keys added to Keras `logs` at each epoch end (History, CSVLogger, progress bar,
# and keras.callbacks.TensorBoard's `epoch_<key>`), plus `memory/gpu<i>_allocated_peak_mib`
# for each GPU. Few on purpose: every key lands in all of those places.
LOG_KEYS = ("memory/process_tree_peak_mib",)
# With several workers, checks happen on batch counts (the same step on every worker).
MULTI_WORKER_CHECK_EVERY = 10
# Between a watchdog ending a fit that raised and the training thread reusing the guard
# (module-wide: a guard stays picklable, as KerasTuner and run_isolated need).
_STALE_LOCK = threading.Lock()


class MemGuardCallback(keras.callbacks.Callback):
    """Logs memory to TensorBoard and ``logs``; stops training before memory runs out.

    With no arguments it logs, warns when less than 10% of the effective memory limit
    is available, and halts (as `on_exceed` says) only as a last resort: when the memory
    projected at the next check, plus what the halt's save takes, would leave less than
    the floor (4% of the limit, in [32 MiB, 1 GiB]) available, or run a GPU's allocator out of
    its limit. The checks keep up with the growth: every batch when it is fast against
    the room left (docs/callback.md).

    Fractions (`0.8`, `"80%"`) are of the *effective limit*: the smaller of the
    machine's RAM and the container's cgroup limit.

    Args:
        log_dir: TensorBoard directory; the guard writes the run `<log_dir>/memory`,
            beside `keras.callbacks.TensorBoard`'s `train/` and `validation/`; its later
            fits continue that run (`memory/fit_index`, docs/callback.md).
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
            the batch it was about to run; the checkpoint holds the model from before
            it, saved once, while there is room),
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
            `min_available_memory` is not given; `"auto"`: 4% of the limit, in [32 MiB, 1 GiB],
            with the growth until training can stop and the save's memory reserved on
            top, and, on GPUs, the allocator's limit as a bound where `max_gpu_memory`
            is not given; `None` disables it. Defaults to `"auto"`.
        release_on_train_end: collect garbage when training ends: a full
            `gc.collect()`, `malloc_trim` and (PyTorch) `torch.cuda.empty_cache()` only
            where it can matter (the process tree grew during the fit by more than
            max(64 MiB, 5%), or available memory is low), else a young-generation
            collection and `malloc_trim`, so a loop of short fits does not pay ~0.2 s
            each (see `policy.train_end_release`). Defaults to `True`.
        on_stuck: what the watchdog does when memory is about to run out while the
            training thread cannot reach a check (an input pipeline filling a shuffle
            buffer before the first batch): `"exit"` prints why, flushes TensorBoard and
            the heartbeat file, and ends the process with exit code
            `keras_memguard.errors.WATCHDOG_EXIT_CODE` (86) before the kernel's OOM
            killer does; `"warn"` only prints. With several workers it only warns.
            See docs/callback.md. Defaults to `"exit"`.
        verbose: `1` prints the summary at train end. Quiet by default, like Keras's
            own callbacks (`EarlyStopping`, `ModelCheckpoint`); a halt is always printed,
            as `TerminateOnNaN` prints its stop. Defaults to `0`.
        preflight: before the first step, estimate the memory the fit will add and warn
            when it already crosses a bound or exceeds what is available
            (docs/callback.md). `"cheap"`: variables, optimizer state, gradients and
            the input pipeline's buffers (about a millisecond, once per model and
            input); `"full"`: also the compiled step's temporaries (seconds, once per
            model and input); `False`: none. Defaults to `"cheap"`.
        evidence: at a halt, write what memory looked like (the summary, leak sites,
            kinds of growth, the estimate, and the framework's own profile or snapshot)
            into `<log_dir>/memory_evidence/` (without `log_dir`: beside the checkpoint),
            at most 64 MiB; a size (`"16MiB"`) sets that cap; `False`: none. See
            docs/evidence.md. Defaults to `True`.

    Attributes:
        estimate: the pre-flight's `MemoryEstimate` of the last fit (`None` before one,
            or with `preflight=False`).
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

    _callback_list_type: type = keras.callbacks.CallbackList  # tf_keras: its own

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
        emergency_available_memory: int | float | str | None = "auto",
        release_on_train_end: bool = True,
        on_stuck: str = "exit",
        verbose: int = 0,
        preflight: str | bool = "cheap",
        evidence: bool | int | str = True,
    ) -> None:
        super().__init__()
        on_exceed = check_choice(
            on_exceed, "on_exceed", ON_EXCEED, f"one of {', '.join(map(repr, ON_EXCEED))}"
        )
        self.check_interval = check_seconds(check_interval, "check_interval")
        leak_warmup_epochs = check_non_negative_int(leak_warmup_epochs, "leak_warmup_epochs")
        on_stuck = check_choice(on_stuck, "on_stuck", ON_STUCK, "'exit' or 'warn'")  # issue #24
        self.on_stuck = on_stuck
        self._watchdog: Watchdog | None = None
        self._fit_callbacks: int | None = None  # id() of the fit's CallbackList
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        self.max_process_memory = optional_size(max_process_memory, "max_process_memory")
        self.min_available_memory = optional_size(min_available_memory, "min_available_memory")
        self.max_gpu_memory = optional_size(max_gpu_memory, "max_gpu_memory")
        check_gpu_fraction_has_totals(self.max_gpu_memory)
        auto_floor = isinstance(emergency_available_memory, str) and (
            emergency_available_memory.strip().lower() == "auto"
        )
        self.emergency_available_memory = (
            None
            if auto_floor
            else optional_size(emergency_available_memory, "emergency_available_memory")
        )
        self.leak_threshold = parse_size(
            leak_threshold, name="leak_threshold", allow_fraction=False
        )
        self.on_exceed = on_exceed
        self.checkpoint_path = check_checkpoint_path(checkpoint_path)
        self.check_every_n_batches = positive_int(
            check_every_n_batches, "check_every_n_batches", allow_none=True
        )
        self.log_every_n_batches = positive_int(
            log_every_n_batches, "log_every_n_batches", allow_none=True
        )
        self.leak_patience = positive_int(leak_patience, "leak_patience") or 1
        self.leak_warmup_epochs = leak_warmup_epochs
        self.trace_leaks = check_choice(
            trace_leaks, "trace_leaks", (None, True, False), "None (auto), True or False"
        )
        self.add_to_logs = None if add_to_logs is None else bool(add_to_logs)
        self.release_on_train_end = bool(release_on_train_end)
        self.verbose = verbose
        self.preflight = _preflight.check_preflight_mode(preflight)  # issue #25
        self._evidence = EvidenceKeeper(check_evidence(evidence))  # issue #28
        self.estimate: Any = None
        self._predicted_peak: int | None = None
        self.bounds = Bounds(
            max_process_memory=self.max_process_memory,
            min_available_memory=self.min_available_memory,
            max_gpu_memory=self.max_gpu_memory,
            emergency_available_memory=self.emergency_available_memory,
            auto_floor=auto_floor,
        )
        self.summary = MemGuardSummary()
        self.last_snapshot: MemorySnapshot | None = None
        self._run = MemoryRunWriter()  # this fit's TensorBoard run
        self._state = HaltState()  # phases, halts, saves: guard/halt.py
        self._reset_run_state()

    @property
    def _writer(self) -> Any:
        """The open event file of this fit's ``memory`` run, or ``None``."""
        return self._run.writer

    @property
    def _tracer(self) -> LeakTracer:
        """This fit's allocation tracer (issue #16)."""
        return self._leaks.tracer

    # ----------------------------------------------------------------- run state
    def _reset_run_state(self) -> None:
        """Per-fit figures and cadence (the halt's state resets in ``begin_fit``)."""
        self.summary = MemGuardSummary()
        self._global_batch = 0
        # issue #16: one allocation tracer per fit (a fit that raised may have left one)
        previous: LeakWatch | None = getattr(self, "_leaks", None)
        if previous is not None:
            previous.close()
        self._leaks = LeakWatch(
            self.leak_warmup_epochs,
            self.leak_threshold,
            self.leak_patience,
            self.trace_leaks,
            self.max_process_memory,
        )
        # issue #23: growth per batch between checks, and the save's memory
        self._reading: Reading | None = None
        self._rates: dict[str, float] = {}
        self._due_in: int | None = 1  # batches until the next check (warm-up: every one)
        self._checks = 0
        self._hooks = 0  # batch-begin hooks seen in this fit, every phase
        self._save_bytes = 0
        self._step_marker: Any = None  # JAX: an output of the step last seen dispatched
        self._log_keys: list[str] | None = None
        self._adding_to_logs = bool(self.add_to_logs)
        self._workers = WorkerContext()
        self._check_every = self.check_every_n_batches
        self._clear_phase_figures()

    def _clear_phase_figures(self) -> None:
        """The phase's check cadence and peaks start afresh."""
        self._batches_since_check = 0
        self._last_check = float("-inf")
        self._sampler = Sampler()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._end_stale_fit()  # a guard reused after a fit that raised
        self._reset_run_state()
        self._state.begin_fit()
        self._fit_callbacks = id(calling_callback_list(self._callback_list_type))
        self._reset_phase()
        self._workers = worker_context(self.model)
        if self._workers.multi_worker and self._check_every is None:
            self._check_every = MULTI_WORKER_CHECK_EVERY
        self._save_bytes = _save_reserve(self.model, self.checkpoint_path)
        snap = self._sample()
        self.summary.start_process_tree = snap.process_tree
        self._warn_unbounded_gpus(snap)
        self._run_preflight(snap)  # issue #25: before the first step
        run = self._workers.run_name
        self._run.open(self.log_dir, run, [gpu.index for gpu in snap.gpus])
        self._begin_evidence(run)  # issue #28
        if self.add_to_logs is None:
            self._adding_to_logs = self._writer is None
        # issue #24: the watchdog thread and its heartbeat file (guard/watchdog.py)
        self._watchdog = start_watchdog(
            snap,
            self.bounds,
            self.on_stuck,
            multi_worker=self._workers.multi_worker,
            writer=self._writer,
            where=lambda: (self._state.phase, self._state.epoch, self._global_batch),
            on_fit_gone=self._end_stale_fit,  # issue #23: a fit that raised
        )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        last_check = self._last_check
        self._state.begin_epoch(epoch)
        self._reset_phase()
        if self.summary.epochs:
            # Issue #23: the previous epoch's end checked a moment ago: no check forced
            # at this epoch's batch 0.
            self._last_check = last_check

    def _reset_phase(self) -> None:
        """A phase (an epoch's training, evaluate, predict) starts: its cadence and peaks.

        The allocator's peaks are reset where the framework allows (this resets them
        for the user's own code too, see docs/callback.md).
        """
        self._clear_phase_figures()
        self._sampler.new_phase()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._global_batch += 1
        log_due = (
            self.log_every_n_batches is not None
            and self._global_batch % self.log_every_n_batches == 0
        )
        self._batch_check(batch, log_due)

    def _batch_check(self, batch: int, log_due: bool = False) -> None:
        """The check of every phase, before a batch: by batch count or time, as configured."""
        if self._state.skips_batch_checks(self._workers.multi_worker):
            return
        self._batches_since_check += 1
        self._hooks += 1
        # By batch count where the growth asks for it (self._due_in, issue #23) or as
        # configured, else by time. With several workers only by count: the same steps.
        every, configured = self._due_in, self._check_every
        if configured is not None and (every is None or configured < every):
            every = configured
        due = every is not None and self._batches_since_check >= every
        if not due and configured is None:
            due = time.monotonic() - self._last_check >= self.check_interval
        if not (due or log_due):
            return
        self._wait_for_dispatched_steps()
        snap = self._sample()
        if log_due:
            self._run.scalars("memory_batch/", snap.metrics(), self._global_batch)
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
    def _end_stale_fit(self, watchdog: Watchdog | None = None) -> None:
        """Closes what a fit that raised left open: its tracer, its run, its watchdog.

        Called on the training thread when the guard is used again, and (issue #23) by
        the fit's own ``watchdog`` thread once that fit left the training thread's
        stack, so that tracing stops and files close within seconds (docs/callback.md).
        The lock and the watchdog's identity keep a late watchdog off a newer fit.
        """
        with _STALE_LOCK:
            if watchdog is not None and watchdog is not self._watchdog:
                return  # its fit's things were closed already
            dog, self._watchdog = self._watchdog, None
            self._state.end_stale_fit()
            leaks = getattr(self, "_leaks", None)
            if leaks is not None:
                leaks.close()
            self._run.drop()
            self._evidence.close()  # issue #28
        if dog is not None:
            dog.stop("raised")  # issue #24; outside the lock: it may join that thread

    def _still_in_fit(self) -> bool:
        """Whether a fit is running now; if the one marked running raised, ends it.

        Keras calls nothing when ``fit`` raises: ``halt.fit_is_running`` says why the
        call stack is asked.
        """
        if self._state.in_fit and not fit_is_running(self.model):
            self._end_stale_fit()
        return self._state.in_fit

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._still_in_fit() and self._fit_callbacks == id(
            calling_callback_list(self._callback_list_type)
        ):  # fit's own validation pass; another callback's evaluate() is nested
            # The epoch's last training batch ran after the last check (at its begin):
            # check it before validation. Every worker reaches this hook: votes are safe.
            self._wait_for_dispatched_steps(all_of_them=True)
            self._check(self._sample(), None)
            # The validation pass: keep the training epoch's peaks, check the same bounds.
            self._batches_since_check = 0
            if self._state.begin_validation():
                # Keras validates after a halt; stop it after its first batch, and keep
                # its partial val_* out of `logs` (on_epoch_end).
                self.model.stop_evaluating = True
            return
        self._begin_standalone("evaluate")

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._state.checks_paused:
            self._model_for_flags.stop_evaluating = True
            return
        self._batch_check(batch)

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._begin_standalone("predict")

    def on_predict_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._state.phase_halted:
            self._model_for_flags.stop_predicting = True
            return
        self._batch_check(batch)

    def on_predict_end(self, logs: dict[str, Any] | None = None) -> None:
        self._state.end_predict()

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._state.nested:
            self._state.end_predict()

    def _begin_standalone(self, phase: str) -> None:
        """``evaluate()`` or ``predict()``: outside ``fit`` a phase of its own.

        Called from inside ``fit`` (a callback predicting on samples, say), it checks
        the same bounds and keeps the epoch's peaks.
        """
        self._still_in_fit()  # a fit that raised ends first
        if not self._state.begin_standalone(phase):
            self._batches_since_check = 0
            return
        self._workers = WorkerContext()
        self._check_every = self.check_every_n_batches
        # issue #23: growth measured from this call's own checks, cadence as configured
        self._reading, self._rates, self._due_in = None, {}, None
        self._reset_phase()
        self._begin_evidence("memory")  # issue #28

    def _begin_evidence(self, run: str) -> None:
        """Issue #28: this fit's (or phase's) evidence goes beside its run; recording off."""
        fit = self._run.fit  # its run: memory, memory_run2, memory_trial_<id>, ...
        where = evidence_directory(self.log_dir, self.checkpoint_path, fit.run if fit else run)
        estimate = self.estimate if self._state.in_fit else None
        self._evidence.begin(where, self.summary, self.bounds, estimate, fit and fit.index)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        halted_now = self._state.end_epoch(epoch)
        snap = self._sample()
        metrics = snap.metrics()
        metrics.update(self._sampler.peaks.metrics())
        metrics.update(bounds_mib(self.bounds, snap))
        if self._predicted_peak is not None:  # issue #25
            metrics["predicted_peak_mib"] = self._predicted_peak / MIB
        slope = self._leaks.epoch_end(epoch, snap, self.summary, self._run.text)
        if slope is not None:
            metrics["leak_slope_mib_per_epoch"] = slope
        metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
        self._run.scalars(PREFIX, metrics, epoch)
        if logs is not None and halted_now:
            # NaN, not deletion: Keras's ModelCheckpoint saves unconditionally when its
            # monitor is missing, while NaN is never an improvement.
            for key in [k for k in logs if k.startswith("val_")]:
                logs[key] = float("nan")
        if self._adding_to_logs and logs is not None:
            self._add_to_logs(logs, metrics, snap)
        self.summary.epochs += 1
        self._check(snap, None)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._state.end_fit()
        self._leaks.close()  # issue #16
        self._stop_watchdog("ended")  # issue #24
        self._evidence.close()  # issue #28
        if self.release_on_train_end:
            # A full release only where it can matter (see train_end_release). The cheap
            # one also keeps PyTorch's cached GPU blocks: a next fit would take them back.
            reason = train_end_release(self.summary.start_process_tree, self._sample())
            full = reason is not None
            self.summary.release = release_memory(generation=2 if full else 1, empty_cache=full)
        snap = self._sample()
        self.summary.end_process_tree = snap.process_tree
        self._run.end_fit(self.summary)  # this fit's point in the memory_fits run
        if self.verbose:
            print(self.summary, file=sys.stderr)

    def _stop_watchdog(self, state: str) -> None:
        """Issue #24: ends the fit's watchdog thread; ``state`` goes to the heartbeat."""
        watchdog, self._watchdog = getattr(self, "_watchdog", None), None
        if watchdog is not None:
            watchdog.stop(state)

    # ------------------------------------------------------------------ sampling
    def _sample(self) -> MemorySnapshot:
        # a non-resettable GPU peak (JAX): live bytes + the training step's temporaries
        training = self._state.in_fit and self._state.phase == "train"
        temporaries = _preflight.step_temporaries(self.estimate) if training else None
        snap = self._sampler.sample(self.summary, temporaries)
        self.last_snapshot = snap
        self._last_check = time.monotonic()
        if self._watchdog is not None:
            self._watchdog.checked(snap)  # issue #24: the training thread is not stuck
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

    # ------------------------------------------------------ pre-flight (issue #25)
    def _run_preflight(self, snap: MemorySnapshot) -> None:
        """Estimates what this fit will add (guard/preflight.py) and warns if it won't fit."""
        self._predicted_peak = None
        if self.preflight is False:
            return
        try:
            data = _preflight.fit_input(self.model)
            self.estimate = _preflight.preflight_estimate(self.model, data, str(self.preflight))
            resident = _preflight.resident_parts(self.model)
            parts = self.estimate.parts
            self._predicted_peak = _preflight.predicted_peak(parts, snap, resident)
            message = _preflight.preflight_message(parts, snap, self.bounds, resident)
        except Exception as err:  # an estimate must never stop training
            warn_once("preflight", f"keras-memguard's pre-flight failed: {err!r}")
            return
        if message is not None:
            warnings.warn(message, MemGuardWarning, stacklevel=3)

    # ---------------------------------------------------------------- thresholds
    def _check(self, snap: MemorySnapshot, batch: int | None) -> None:
        """One check: warn, or halt when a bound is crossed (after the workers' vote)."""
        state = self._state
        if state.checks_paused:
            return
        self._warn_low_memory(snap)
        self._evidence.observe(snap)  # issue #28: recording on once memory nears a bound
        found, near = self._project(snap, batch)
        if self.on_exceed == "warn":
            self._warn_crossings(found, batch)
            return
        # Every worker votes at this same step, so that all stop together or none does
        # (outside fit, each process decides alone); the cadence goes by the vote too.
        cross, by = (found[0] if found else None), None
        if state.in_fit and self._workers.multi_worker:
            voted = vote(self._workers, found, near)
            self.summary.votes += 1
            # Only the vote sets the cadence: this worker's own projection could differ.
            self._due_in = None
            self._check_every = (
                1 if voted.near else self.check_every_n_batches or MULTI_WORKER_CHECK_EVERY
            )
            cross = voted.crossing
            if voted.worker is not None and cross is not ANOTHER_WORKER:
                by = self._workers.worker_name(voted.worker)
        if cross is None:
            return
        where = (state.epoch, batch, self.on_exceed, None, state.phase, cross.reserve, by)
        self._halt(Halt(cross.metric, cross.value, cross.bound, *where), cross.parameter, snap)

    def _warn_crossings(self, found: list[Crossing], batch: int | None) -> None:
        """``on_exceed="warn"``: one warning per crossing, again once it cleared."""
        state = self._state
        new = set(state.warn_once_per_crossing([c.metric for c in found]))
        for crossing in found:
            if crossing.metric not in new:
                continue
            new.discard(crossing.metric)
            value, bound = crossing.value, crossing.bound
            where = (state.epoch, batch, "warn", None, state.phase, crossing.reserve)
            halt = Halt(crossing.metric, value, bound, *where)
            self.summary.halts.append(halt)
            warnings.warn(
                f"keras-memguard: {halt.describe()} ({crossing.parameter}); "
                f"{'training' if state.in_fit else state.phase} continues because "
                "on_exceed='warn'.",
                MemGuardWarning,
                stacklevel=3,
            )

    def _project(self, snap: MemorySnapshot, batch: int | None) -> tuple[list[Any], bool]:
        """Issue #23: the bounds the next check's memory (+ the save) crosses; the cadence.

        Sets ``_due_in``, the batches until the next check (``None``: by time), and says
        whether the growth asks for checks sooner than the multi-worker cadence.
        """
        now = reading(snap, self._hooks - (batch is not None))
        rates = growth_per_batch(self._reading, now)
        if rates is not None or self._reading is None:
            self._reading, self._rates = now, rates or {}
        # After a "stop" before a training batch, Keras still runs that batch.
        extra = int(self.on_exceed == "stop" and self._state.phase == "train" and batch is not None)
        save = self._save_bytes if self._state.in_fit and self.on_exceed != "warn" else 0
        look = outlook(self.bounds, snap, self._rates, save=save, extra_batches=extra)
        self._checks += 1
        warmup = self._state.in_fit and self._checks <= WARMUP_CHECKS
        self._due_in = 1 if warmup else look.batches_to_check
        near = self._due_in is not None and self._due_in < MULTI_WORKER_CHECK_EVERY
        return look.crossings, near

    def _warn_low_memory(self, snap: MemorySnapshot) -> None:
        if self._state.warn_low_memory(is_low_memory(snap)):
            warnings.warn(
                f"keras-memguard: only {format_bytes(snap.effective_available)} of "
                f"{format_bytes(snap.effective_limit)} is available; set max_process_memory "
                "or min_available_memory to stop cleanly before the OOM killer acts.",
                MemGuardWarning,
                stacklevel=2,
            )

    def _halt(self, halt: Halt, parameter: str, snap: MemorySnapshot) -> None:
        """Carries out the state machine's ``HaltPlan``: save, record, say, then stop."""
        has_path = self.checkpoint_path is not None
        plan = self._state.halt(halt.batch, self.on_exceed, checkpoint=has_path)
        saved = self._save_checkpoint() if plan.save else None
        halt = replace(halt, checkpoint=saved)
        self.summary.halts.append(halt)
        line = f"keras-memguard: {plan.verb}: {halt.describe()} ({parameter})"
        if plan.standalone or plan.nested:
            line += f"; {halt.phase}() gives no partial result"
        if saved:
            line += f"; model saved to {saved}"
        elif not plan.standalone and not has_path:
            line += "; no checkpoint_path was given, so nothing was saved"
        elif not plan.standalone and not self._workers.is_chief:
            line += f"; {self._workers.chief_name} keeps the checkpoint"
        kept = self._evidence.write(line, halt, snap)  # issue #28
        line += f"; memory evidence in {kept}" if kept else ""
        print(line, file=sys.stderr, flush=True)
        self._run.text("memory/halt", line, self._state.epoch or 0)
        if plan.stop_evaluating:
            self.model.stop_evaluating = True
        if plan.stop_training:
            self.model.stop_training = True
        if plan.raise_error:
            if plan.standalone or plan.nested:
                # JAX's evaluate() and predict() put the model's state back only when their
                # loop ends; reading self.model does it now, so the model stays usable.
                _ = self.model
            if not plan.nested:  # a nested call's fit ends as any fit that raised
                self._run.close()
                self._stop_watchdog("raised")  # issue #24
                self._evidence.close()  # issue #28
            raise MemoryLimitExceededError(
                line,
                snapshot=snap,
                metric=halt.metric,
                value=halt.value,
                bound=halt.bound,
                epoch=halt.epoch,
                batch=halt.batch,
            )

    @property
    def _model_for_flags(self) -> Any:
        """The model, for a stop flag: on JAX ``self.model`` also syncs its state."""
        return self._model if keras.backend.backend() == "jax" else self.model

    def _save_checkpoint(self) -> str | None:
        return save_checkpoint(self.model, self.checkpoint_path, self._workers)

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


def _save_reserve(model: Any, path: str | None) -> int:
    """Bytes a save of ``model`` to ``path`` needs at its peak (``headroom.save_headroom``).

    The saved state is the variables and the optimizer's state (``estimate.static``);
    an optimizer that is not built yet is predicted from its class.
    """
    if path is None:
        return 0
    try:
        from keras_memguard.estimate.static import model_parts, variables_bytes

        state = sum(part.bytes or 0 for part in model_parts(model)[:2])
        optimizer = getattr(model, "optimizer", None)
        variables = [*model.weights, *(getattr(optimizer, "variables", None) or ())]
        largest = max((variables_bytes([v])[0] for v in variables), default=0)
    except Exception as err:  # an estimate must never stop training
        warn_once("save-reserve", f"keras-memguard cannot size the checkpoint's save: {err}")
        return 0
    return save_headroom(path, state, largest)
