"""One memory story across many fits: one run per guard and process, one summary run.

A search, a k-fold loop or KerasTuner calls ``fit()`` many times with one guard (or with
KerasTuner's deep copies of it, in this process or in isolated trials) and one
``log_dir``. The runs:

- a guard's fits in one process continue one run: ``memory`` for the first under
  ``log_dir``; another process's guard (or a copy of a guard) claims ``memory_run2``,
  ``memory_run3``, ... with ``os.mkdir``, so two processes never write one run. The
  step keeps counting across the fits (:class:`Steps`), and ``memory/fit_index`` says
  which fit each epoch belongs to;
- a KerasTuner trial run by :func:`~keras_memguard.isolate_trials`:
  ``memory_trial_<trial id>`` (trials are what users compare).

Each fit has a number under ``log_dir`` (1, 2, ...; counted in
``memory_fits/fit_count`` under a file lock, so processes share one sequence; a
trial's number is its trial id). At its end the fit adds one point to the summary run
``memory_fits``: the tags ``fits/start_mib``, ``fits/end_mib`` and ``fits/peak_mib``
(process tree) and the text ``fits/run`` at step = that number, so growth across fits
or trials is one rising line in TensorBoard. Each process appends its points to one
event file there. ``memguard report LOGDIR`` lists the fits.

Example:
    >>> fit = begin("logs")                    # in MemGuardCallback.on_train_begin
    >>> (fit.run, fit.index)
    ('memory', 1)
    >>> fit = begin("logs", previous=fit)      # the same guard's next fit
    >>> (fit.run, fit.index)
    ('memory', 2)
    >>> end("logs", fit, guard.summary)        # in on_train_end
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from keras_memguard.errors import warn_once
from keras_memguard.guard.tensorboard import EventWriter, event_files, read_events
from keras_memguard.memory_snapshot import to_mib

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the count is not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["SUMMARY_RUN", "Fit", "Steps", "begin", "current_trial", "end", "set_trial"]

SUMMARY_RUN = "memory_fits"
COUNT_FILE = "fit_count"  # in SUMMARY_RUN: the last fit number given out
TAG_PREFIX = "fits/"
_MAX_RUNS = 100_000
_trial: str | None = None
_trial_lock = threading.Lock()
_summary_files: dict[tuple[int, str], str] = {}  # (pid, log_dir): this process's file
_summary_lock = threading.Lock()


@dataclass(frozen=True)
class Fit:
    """One fit's place in the story: its run's directory name and its number."""

    run: str
    index: int
    trial: str | None = None
    base: str = "memory"
    pid: int = 0  # the process that holds the run


class Steps:
    """The step axes of one run across the fits that continue it (pure arithmetic).

    Epoch-level tags: a fit's epoch ``e`` goes to ``e + shift``, the shift chosen at the
    fit's first epoch-level write so that it starts after the steps written so far
    (``initial_epoch`` that already continues them keeps its own numbers). Batch-level
    tags: the fit's batch ``b`` (1, 2, ...) goes to ``b`` plus the batches before it.

    Example:
        >>> steps = Steps()
        >>> steps.begin_fit(); [steps.epoch(0), steps.epoch(1)]
        [0, 1]
        >>> steps.begin_fit(); [steps.epoch(0), steps.batch(1)]
        [2, 1]
    """

    def __init__(self) -> None:
        self.next_epoch = 0
        self.next_batch = 0
        self._shift: int | None = None
        self._batch_base = 0

    def begin_fit(self) -> None:
        """A fit starts: its steps follow the ones written so far."""
        self._shift = None
        self._batch_base = self.next_batch

    def epoch(self, epoch: int) -> int:
        """The step of the fit's ``epoch``."""
        if self._shift is None:
            self._shift = max(0, self.next_epoch - epoch)
        step = epoch + self._shift
        self.next_epoch = max(self.next_epoch, step + 1)
        return step

    def batch(self, batch: int) -> int:
        """The step of the fit's ``batch`` (counted from 1 over the fit)."""
        step = self._batch_base + batch
        self.next_batch = max(self.next_batch, step)
        return step


def set_trial(trial_id: str | None) -> None:
    """Names the fits that follow after a tuner trial (``None``: by fit number again)."""
    global _trial
    with _trial_lock:
        _trial = trial_id


def current_trial() -> str | None:
    """The trial id set by :func:`set_trial`, if any."""
    return _trial


def _claim(log_dir: str, base_run: str) -> str:
    """The first of ``base_run``, ``base_run_run2``, ... this call creates (``os.mkdir``)."""
    for number in range(1, _MAX_RUNS):
        run = base_run if number == 1 else f"{base_run}_run{number}"
        try:
            os.mkdir(os.path.join(log_dir, run))
        except FileExistsError:
            continue
        return run
    return base_run


def _last_summarised(summary_dir: str) -> int:
    """The highest step in the summary run's event files (0 if none)."""
    return max(
        (int(event.step) for path in event_files(summary_dir) for event in read_events(path)),
        default=0,
    )


def next_fit_number(log_dir: str) -> int:
    """The next fit number under ``log_dir``, shared by every process writing there.

    The count lives in ``memory_fits/fit_count``, locked while it is read and written;
    a missing count continues from the summary run's highest step.
    """
    summary_dir = os.path.join(log_dir, SUMMARY_RUN)
    os.makedirs(summary_dir, exist_ok=True)
    with open(os.path.join(summary_dir, COUNT_FILE), "a+", encoding="ascii") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.seek(0)
        text = f.read().strip()
        number = (int(text) if text.isdigit() else _last_summarised(summary_dir)) + 1
        f.seek(0)
        f.truncate()
        f.write(str(number))
        f.flush()
    return number


def begin(log_dir: str, base_run: str = "memory", previous: Fit | None = None) -> Fit:
    """The run and number of the fit that starts now under ``log_dir``.

    ``previous`` is the same guard's last fit under ``log_dir``: its run continues when
    it was this process's and still exists; otherwise a run is claimed.
    """
    os.makedirs(log_dir, exist_ok=True)
    pid = os.getpid()
    trial = current_trial()
    if trial is not None:
        run = f"{base_run}_trial_{trial}"
        os.makedirs(os.path.join(log_dir, run), exist_ok=True)
        index = int(trial) if trial.isdigit() else next_fit_number(log_dir)
        return Fit(run, index, trial, base_run, pid)
    continues = (
        previous is not None
        and previous.trial is None
        and previous.base == base_run
        and previous.pid == pid
        and os.path.isdir(os.path.join(log_dir, previous.run))
    )
    run = previous.run if continues and previous is not None else _claim(log_dir, base_run)
    if base_run == "memory":
        index = next_fit_number(log_dir)
    else:  # a worker's fits are the chief's: numbered in the worker's own run
        index = previous.index + 1 if continues and previous is not None else 1
    return Fit(run, index, None, base_run, pid)


def end(log_dir: str, fit: Fit, summary: Any) -> None:
    """Adds this fit's start, end and peak process-tree memory to the summary run.

    Only the chief's fits (run ``memory...``) are summarised: a multi-worker fit is one fit.
    """
    if fit.base != "memory" or not os.path.isdir(log_dir):
        return  # not the chief's fit, or the user removed log_dir: never recreate it
    points = {
        "start_mib": to_mib(summary.start_process_tree),
        "end_mib": to_mib(summary.end_process_tree),
        "peak_mib": to_mib(summary.peak_process_tree),
    }
    key = (os.getpid(), os.path.abspath(log_dir))
    try:
        with _summary_lock:  # this process's points go to one event file, appended
            writer = EventWriter(os.path.join(log_dir, SUMMARY_RUN), path=_summary_files.get(key))
            _summary_files[key] = writer.path
            try:
                for name, value in points.items():
                    if value is not None:
                        writer.scalar(TAG_PREFIX + name, value, fit.index)
                writer.text(TAG_PREFIX + "run", fit.run, fit.index)
            finally:
                writer.close()
    except Exception as err:
        warn_once(
            f"fits-summary:{log_dir}",
            f"keras-memguard cannot write the fits summary under {log_dir!r}: {err}",
        )
