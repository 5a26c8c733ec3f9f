"""One memory story across many fits: a run per fit (or trial) and one summary run.

A search, a k-fold loop or KerasTuner calls ``fit()`` many times with one guard (or with
KerasTuner's deep copies of it, in this process or in isolated trials) and one
``log_dir``. Each fit writes its own TensorBoard run:

- the first fit under ``log_dir``: ``memory`` (as a single fit always did);
- later fits: ``memory_fit2``, ``memory_fit3``, ... (claimed with ``os.mkdir``, so two
  processes never write one run);
- a KerasTuner trial run by :func:`~keras_memguard.isolate_trials`:
  ``memory_trial_<trial id>``.

and at its end adds one point to the summary run ``memory_fits``: the tags
``fits/start_mib``, ``fits/end_mib`` and ``fits/peak_mib`` (process tree) at step = the
fit number (the trial number for trials), so growth across fits or trials is one
rising line in TensorBoard. ``memguard report LOGDIR`` lists the fits.

Example:
    >>> fit = begin("logs", "memory")          # in MemGuardCallback.on_train_begin
    >>> fit.run
    'memory'
    >>> end("logs", fit, guard.summary)        # in on_train_end
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from keras_memguard.errors import warn_once
from keras_memguard.guard.tensorboard import EventWriter
from keras_memguard.memory_snapshot import to_mib

__all__ = ["SUMMARY_RUN", "Fit", "begin", "current_trial", "end", "set_trial"]

SUMMARY_RUN = "memory_fits"
TAG_PREFIX = "fits/"
_MAX_FITS = 100_000
_trial: str | None = None
_trial_lock = threading.Lock()


@dataclass(frozen=True)
class Fit:
    """One fit's place in the story: its run's directory name and its step."""

    run: str
    index: int
    trial: str | None = None
    base: str = "memory"


def set_trial(trial_id: str | None) -> None:
    """Names the fits that follow after a tuner trial (``None``: by fit number again)."""
    global _trial
    with _trial_lock:
        _trial = trial_id


def current_trial() -> str | None:
    """The trial id set by :func:`set_trial`, if any."""
    return _trial


def _claim(log_dir: str, base_run: str) -> Fit:
    for number in range(1, _MAX_FITS):
        run = base_run if number == 1 else f"{base_run}_fit{number}"
        try:
            os.mkdir(os.path.join(log_dir, run))
        except FileExistsError:
            continue
        return Fit(run, number, base=base_run)
    return Fit(base_run, 1, base=base_run)


def begin(log_dir: str, base_run: str = "memory") -> Fit:
    """Claims the run directory of the fit that starts now under ``log_dir``."""
    os.makedirs(log_dir, exist_ok=True)
    trial = current_trial()
    if trial is None:
        return _claim(log_dir, base_run)
    run = f"{base_run}_trial_{trial}"
    os.makedirs(os.path.join(log_dir, run), exist_ok=True)
    index = int(trial) if trial.isdigit() else _claim(log_dir, f"{base_run}_trialfit").index
    return Fit(run, index, trial, base_run)


def end(log_dir: str, fit: Fit, summary: Any) -> None:
    """Adds this fit's start, end and peak process-tree memory to the summary run.

    Only the chief's fits (run ``memory``, or ``memory_p0`` under jax.distributed) are
    summarised: a multi-worker fit is one fit.
    """
    if fit.base not in ("memory", "memory_p0") or not os.path.isdir(log_dir):
        return  # not the chief's fit, or the user removed log_dir: never recreate it
    points = {
        "start_mib": to_mib(summary.start_process_tree),
        "end_mib": to_mib(summary.end_process_tree),
        "peak_mib": to_mib(summary.peak_process_tree),
    }
    try:
        writer = EventWriter(os.path.join(log_dir, SUMMARY_RUN))
        try:
            for key, value in points.items():
                if value is not None:
                    writer.scalar(TAG_PREFIX + key, value, fit.index)
            writer.text(TAG_PREFIX + "run", fit.run, fit.index)
        finally:
            writer.close()
    except Exception as err:
        warn_once(
            f"fits-summary:{log_dir}",
            f"keras-memguard cannot write the fits summary under {log_dir!r}: {err}",
        )
