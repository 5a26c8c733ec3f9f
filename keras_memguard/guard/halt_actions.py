"""The halt carried out: what it says, where it says it, the error it raises.

``guard/halt.py``'s ``HaltState`` decides what a halt does (a ``HaltPlan``); the callback
saves the checkpoint and sets the model's stop flags; these functions compose the halt's
one line (pure), print it and record it (TensorBoard, the evidence bundle), and build
the ``MemoryLimitExceededError``. ``warn_crossings`` is ``on_exceed="warn"``'s
counterpart: a warning instead of a halt.

Example:
    >>> line = halt_line(plan, halt, "max_process_memory", has_path=True, workers=workers)
    >>> line = say_halt(line, halt, snap, evidence, run, epoch=3)
    >>> raise halt_error(line, halt, snap)
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from keras_memguard.errors import MemGuardWarning, MemoryLimitExceededError
from keras_memguard.guard.distributed import WorkerContext
from keras_memguard.guard.evidence import EvidenceKeeper
from keras_memguard.guard.halt import HaltPlan, HaltState
from keras_memguard.guard.policy import Crossing, Halt, MemGuardSummary
from keras_memguard.guard.tensorboard import MemoryRunWriter
from keras_memguard.memory_snapshot import MemorySnapshot

__all__ = ["halt_error", "halt_line", "hide_partial_validation", "say_halt", "warn_crossings"]


def halt_line(
    plan: HaltPlan, halt: Halt, parameter: str, *, has_path: bool, workers: WorkerContext
) -> str:
    """The halt's line: the outcome, what crossed which bound, and where the model went.

    Example:
        >>> halt_line(plan, halt, "max_process_memory", has_path=False, workers=workers)
        'keras-memguard: stopping training: ...; no checkpoint_path was given, so nothing was saved'
    """
    line = f"keras-memguard: {plan.verb}: {halt.describe()} ({parameter})"
    if plan.standalone or plan.nested:
        line += f"; {halt.phase}() gives no partial result"
    if halt.checkpoint:
        line += f"; model saved to {halt.checkpoint}"
    elif not plan.standalone and not has_path:
        line += "; no checkpoint_path was given, so nothing was saved"
    elif not plan.standalone and not workers.is_chief:
        line += f"; {workers.chief_name} keeps the checkpoint"
    return line


def say_halt(
    line: str,
    halt: Halt,
    snap: MemorySnapshot,
    evidence: EvidenceKeeper,
    run: MemoryRunWriter,
    epoch: int,
) -> str:
    """Writes the evidence bundle (issue #28), prints the line, puts it in TensorBoard.

    Returns the line as printed (with the bundle's directory, where one was written).
    """
    kept = evidence.write(line, halt, snap)
    line += f"; memory evidence in {kept}" if kept else ""
    print(line, file=sys.stderr, flush=True)
    run.text("memory/halt", line, epoch)
    return line


def halt_error(line: str, halt: Halt, snap: MemorySnapshot) -> MemoryLimitExceededError:
    """The error a halt raises (``on_exceed="raise"``, or in ``evaluate()``/``predict()``)."""
    return MemoryLimitExceededError(
        line,
        snapshot=snap,
        metric=halt.metric,
        value=halt.value,
        bound=halt.bound,
        epoch=halt.epoch,
        batch=halt.batch,
    )


def warn_crossings(
    state: HaltState, summary: MemGuardSummary, found: list[Crossing], batch: int | None
) -> None:
    """``on_exceed="warn"``: one warning per crossing, again once it cleared.

    Each warning is recorded in ``summary.halts`` as a ``Halt`` whose action is ``"warn"``.
    """
    new = set(state.warn_once_per_crossing([c.metric for c in found]))
    for crossing in found:
        if crossing.metric not in new:
            continue
        new.discard(crossing.metric)
        value, bound = crossing.value, crossing.bound
        where = (state.epoch, batch, "warn", None, state.phase, crossing.reserve)
        halt = Halt(crossing.metric, value, bound, *where)
        summary.halts.append(halt)
        warnings.warn(
            f"keras-memguard: {halt.describe()} ({crossing.parameter}); "
            f"{'training' if state.in_fit else state.phase} continues because "
            "on_exceed='warn'.",
            MemGuardWarning,
            stacklevel=3,
        )


def hide_partial_validation(logs: dict[str, Any]) -> None:
    """An epoch halted: its ``val_*`` logs (a batch or so of validation) become NaN.

    NaN, not deletion: Keras's ``ModelCheckpoint`` saves unconditionally when its monitor
    is missing, while NaN is never an improvement.
    """
    for key in [k for k in logs if k.startswith("val_")]:
        logs[key] = float("nan")
