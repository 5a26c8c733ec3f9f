"""``MemGuardCallback``: memory in TensorBoard and ``logs``, and a clean stop before OOM.

Logged keys (TensorBoard tags are ``memory/<key>`` in the run ``<log_dir>/memory``; the
Keras ``logs`` get a short subset, see ``epoch_logs.LOG_KEYS``) are documented with their units in
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
from dataclasses import fields, replace
from typing import Any

import keras

from keras_memguard.backends.base import current_backend
from keras_memguard.errors import MemGuardWarning
from keras_memguard.guard import preflight as _preflight  # issue #25
from keras_memguard.guard.arguments import guard_settings
from keras_memguard.guard.cadence import MULTI_WORKER_CHECK_EVERY, Cadence
from keras_memguard.guard.checkpoint import save_checkpoint, save_reserve
from keras_memguard.guard.distributed import ANOTHER_WORKER, WorkerContext, vote, worker_context
from keras_memguard.guard.epoch_logs import LOG_KEYS, PREFIX, add_to_logs, log_keys
from keras_memguard.guard.evidence import EvidenceKeeper, evidence_directory
from keras_memguard.guard.halt import HaltState, calling_callback_list, fit_is_running
from keras_memguard.guard.halt_actions import (
    halt_error,
    halt_line,
    hide_partial_validation,
    say_halt,
    warn_crossings,
)
from keras_memguard.guard.leak_watch import LeakWatch
from keras_memguard.guard.leaks import LeakTracer
from keras_memguard.guard.peaks import Sampler
from keras_memguard.guard.policy import (
    Halt,
    MemGuardSummary,
    bounds_mib,
    gpus_without_total,
    is_low_memory,
    low_memory_message,
    train_end_release,
    unbounded_gpus_message,
)
from keras_memguard.guard.release import release_memory
from keras_memguard.guard.tensorboard import MemoryRunWriter, memory_layout
from keras_memguard.guard.watchdog import Watchdog, start_watchdog
from keras_memguard.memory_snapshot import MIB, MemorySnapshot

__all__ = ["LOG_KEYS", "Halt", "MemGuardCallback", "MemGuardSummary", "memory_layout"]

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
        settings = guard_settings(locals())  # first: the arguments by name, and no other
        super().__init__()
        for field in fields(settings):  # guard.bounds, guard.check_interval, ... (arguments.py)
            setattr(self, field.name, getattr(settings, field.name))
        self._watchdog: Watchdog | None = None
        self._fit_callbacks: int | None = None  # id() of the fit's CallbackList
        self._evidence = EvidenceKeeper(settings.evidence)  # issue #28
        self.estimate: Any = None
        self._predicted_peak: int | None = None
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
        # issue #23: when to check (growth per batch between checks), the save's memory
        self._cadence = Cadence(self.check_every_n_batches)
        self._hooks = 0  # batch-begin hooks seen in this fit, every phase
        self._save_bytes = 0
        self._step_marker: Any = None  # JAX: an output of the step last seen dispatched
        self._log_keys: list[str] | None = None
        self._adding_to_logs = bool(self.add_to_logs)
        self._workers = WorkerContext()
        self._clear_phase_figures()

    def _clear_phase_figures(self) -> None:
        """The phase's check cadence and peaks start afresh."""
        self._cadence.new_phase()
        self._sampler = Sampler()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._end_stale_fit()  # a guard reused after a fit that raised
        self._reset_run_state()
        self._state.begin_fit()
        self._fit_callbacks = id(calling_callback_list(self._callback_list_type))
        self._reset_phase()
        self._workers = worker_context(self.model)
        if self._workers.multi_worker and self._cadence.check_every is None:
            self._cadence.check_every = MULTI_WORKER_CHECK_EVERY
        self._save_bytes = save_reserve(self.model, self.checkpoint_path)
        snap = self._sample()
        self.summary.start_process_tree = snap.process_tree
        missing = gpus_without_total(self.bounds, snap)  # no total: no bound, say it loudly
        if missing:
            message = unbounded_gpus_message(self.max_gpu_memory, missing)
            warnings.warn(message, MemGuardWarning, stacklevel=2)
        # issue #25: before the first step (an estimate that failed keeps the last one)
        estimate, self._predicted_peak = _preflight.run_preflight(
            self.model, self.preflight, snap, self.bounds
        )
        self.estimate = self.estimate if estimate is None else estimate
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
        last_check = self._cadence.last_check
        self._state.begin_epoch(epoch)
        self._reset_phase()
        if self.summary.epochs:
            # Issue #23: the previous epoch's end checked a moment ago: no check forced
            # at this epoch's batch 0.
            self._cadence.last_check = last_check

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
        self._cadence.batches_since_check += 1
        self._hooks += 1
        # By batch count where the growth asks for it (issue #23) or as configured, else
        # by time. With several workers only by count: the same steps (guard/cadence.py).
        due = self._cadence.due(self.check_interval)
        if not (due or log_due):
            return
        self._wait_for_dispatched_steps()
        snap = self._sample()
        if log_due:
            self._run.scalars("memory_batch/", snap.metrics(), self._global_batch)
        if due:
            self._cadence.batches_since_check = 0
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
            self._cadence.batches_since_check = 0
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
            self._cadence.batches_since_check = 0
            return
        self._workers = WorkerContext()
        # issue #23: growth measured from this call's own checks, cadence as configured
        self._cadence.restart(self.check_every_n_batches)
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
            hide_partial_validation(logs)
        if self._adding_to_logs and logs is not None:
            if self._log_keys is None:  # fixed at the fit's first epoch end
                self._log_keys = log_keys(metrics, snap)
            add_to_logs(logs, metrics, self._log_keys)
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
        self._cadence.last_check = time.monotonic()
        if self._watchdog is not None:
            self._watchdog.checked(snap)  # issue #24: the training thread is not stuck
        return snap

    # ---------------------------------------------------------------- thresholds
    def _check(self, snap: MemorySnapshot, batch: int | None) -> None:
        """One check: warn, or halt when a bound is crossed (after the workers' vote)."""
        state = self._state
        if state.checks_paused:
            return
        if state.warn_low_memory(is_low_memory(snap)):
            warnings.warn(low_memory_message(snap), MemGuardWarning, stacklevel=1)
        self._evidence.observe(snap)  # issue #28: recording on once memory nears a bound
        # issue #23: after a "stop" before a training batch, Keras still runs that batch
        extra = int(self.on_exceed == "stop" and state.phase == "train" and batch is not None)
        save = self._save_bytes if state.in_fit and self.on_exceed != "warn" else 0
        batches = self._hooks - (batch is not None)
        found, near = self._cadence.project(
            self.bounds, snap, batches, save=save, extra_batches=extra, warmup=state.in_fit
        )
        if self.on_exceed == "warn":
            warn_crossings(state, self.summary, found, batch)
            return
        # Every worker votes at this same step, so that all stop together or none does
        # (outside fit, each process decides alone); the cadence goes by the vote too.
        cross, by = (found[0] if found else None), None
        if state.in_fit and self._workers.multi_worker:
            voted = vote(self._workers, found, near)
            self.summary.votes += 1
            self._cadence.voted(voted.near, self.check_every_n_batches)
            cross = voted.crossing
            if voted.worker is not None and cross is not ANOTHER_WORKER:
                by = self._workers.worker_name(voted.worker)
        if cross is None:
            return
        where = (state.epoch, batch, self.on_exceed, None, state.phase, cross.reserve, by)
        self._halt(Halt(cross.metric, cross.value, cross.bound, *where), cross.parameter, snap)

    def _halt(self, halt: Halt, parameter: str, snap: MemorySnapshot) -> None:
        """Carries out the state machine's ``HaltPlan``: save, record, say, then stop."""
        has_path = self.checkpoint_path is not None
        plan = self._state.halt(halt.batch, self.on_exceed, checkpoint=has_path)
        saved = (
            save_checkpoint(self.model, self.checkpoint_path, self._workers) if plan.save else None
        )
        halt = replace(halt, checkpoint=saved)
        self.summary.halts.append(halt)
        line = halt_line(plan, halt, parameter, has_path=has_path, workers=self._workers)
        line = say_halt(line, halt, snap, self._evidence, self._run, self._state.epoch or 0)
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
            raise halt_error(line, halt, snap)

    @property
    def _model_for_flags(self) -> Any:
        """The model, for a stop flag: on JAX ``self.model`` also syncs its state."""
        return self._model if keras.backend.backend() == "jax" else self.model
