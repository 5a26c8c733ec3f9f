"""The halt as one small state machine: phases, crossings, votes and saves, without Keras.

``MemGuardCallback`` turns Keras's hooks into the events below and carries out what
they return (sample, save, print, raise, set Keras's stop flags); ``HaltState`` alone
decides. It does no I/O and imports no framework, so every transition is unit-tested
without Keras (tests/test_halt_state.py).

State: ``in_fit`` (a ``fit`` is running), ``phase`` (``"train"``, ``"validation"``,
``"evaluate"``, ``"predict"``), ``halted`` / ``halted_epoch`` (the fit was halted, in
which epoch), ``phase_halted`` (the running phase was halted).

Events (hook -> event):

- ``on_train_begin`` -> ``begin_fit()``; ``on_epoch_begin`` -> ``begin_epoch(epoch)``.
- ``on_test_begin`` from the fit's own callback list -> ``begin_validation()`` (after
  the check of the epoch's last batch); otherwise, and ``on_predict_begin`` ->
  ``begin_standalone(phase)``, which inside a fit (another callback calling
  ``predict()`` with the guard: Keras builds a new callback list for it, see
  ``calling_callback_list``) marks the call *nested*: same bounds, epoch peaks kept,
  and a crossing raises as outside a fit (no partial result) after saving the fit.
- ``on_predict_end`` / ``on_test_end`` of a nested call -> ``end_predict()``;
  ``on_epoch_end`` -> ``end_epoch(epoch)``.
- a check: ``checks_paused`` first; a crossing under ``on_exceed="warn"`` ->
  ``warn_once_per_crossing(metrics)``; otherwise ``vote(found, any_worker)`` (every
  worker votes inside a fit) and, when it says halt, ``halt(batch, on_exceed,
  checkpoint)`` -> a ``HaltPlan`` the callback carries out.
- ``on_train_end`` -> ``end_fit()``; a fit that raised (Keras then calls nothing) ->
  ``end_stale_fit()``, found with ``fit_is_running`` (see there why a stack walk) or
  by the fit's watchdog thread (guard/watchdog.py).

Example:
    >>> state = HaltState()
    >>> state.begin_fit(); state.begin_epoch(0)
    >>> plan = state.halt(batch=3, on_exceed="stop", checkpoint=True)
    >>> (plan.save, plan.stop_training)
    (True, True)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HaltPlan", "HaltState", "calling_callback_list", "fit_is_running"]

LOW_MEMORY = "low-memory"  # the low-memory warning's key among the warned crossings


@dataclass(frozen=True)
class HaltPlan:
    """What the callback does for one halt, in this order.

    Attributes:
        standalone: ``evaluate()``/``predict()`` outside a fit: nothing trained, nothing
            saved, and the caller gets an error rather than a truncated result.
        save: save the checkpoint now (a fit was halted and a path was given).
        stop_evaluating: the halted phase is the validation pass: stop it.
        raise_error: raise ``MemoryLimitExceededError`` now (the fit, if any, ends here:
            Keras will not call ``on_train_end``).
        stop_training: set ``model.stop_training`` (``on_exceed="stop"`` in a fit, and
            before the raise of a nested call: a caller that catches it ends the fit).
        verb: how the printed line names the outcome.
        nested: ``evaluate()``/``predict()`` called inside the fit (by another
            callback): it raises, and the fit it raises through ends by the same
            mechanism as any fit that raised (guard/watchdog.py).
    """

    standalone: bool
    save: bool
    stop_evaluating: bool
    raise_error: bool
    stop_training: bool
    verb: str
    nested: bool = False


@dataclass
class HaltState:
    """The guard's halt state across one fit (or one ``evaluate()``/``predict()``).

    Example:
        >>> state = HaltState()
        >>> state.begin_standalone("predict")  # predict() outside a fit: a phase of its own
        True
        >>> state.halt(batch=0, on_exceed="stop", checkpoint=True).raise_error
        True
    """

    in_fit: bool = False
    phase: str = "train"
    epoch: int | None = 0
    halted: bool = False
    halted_epoch: int | None = None
    phase_halted: bool = False
    nested: bool = False  # the phase is an evaluate()/predict() called inside the fit
    warned: set[str] = field(default_factory=set)  # crossings warned about, not yet over

    # ------------------------------------------------------------ fit and phases
    def begin_fit(self) -> None:
        """``on_train_begin``: a new fit; nothing of the previous run carries over."""
        self.__dict__.update(HaltState(in_fit=True).__dict__)

    def end_fit(self) -> None:
        """``on_train_end``: the fit is over (its halt stays readable)."""
        self.in_fit = False

    def end_stale_fit(self) -> None:
        """A fit that raised: Keras ran no ``on_train_end``, so the guard ends it here."""
        self.in_fit = False

    def begin_epoch(self, epoch: int) -> None:
        """``on_epoch_begin``: the epoch's training phase starts."""
        self.epoch = epoch
        self._enter("train")

    def begin_validation(self) -> bool:
        """``on_test_begin`` inside a fit: the validation pass starts.

        Returns whether to stop it at once: after a halt Keras still validates; it stops
        after its first batch (the earliest Keras allows).
        """
        self.phase = "validation"
        self.nested = False
        return self.halted

    def begin_standalone(self, phase: str) -> bool:
        """``evaluate()`` or ``predict()`` starts; returns whether it starts a new phase.

        Inside a fit (another callback predicting on samples, say) it is *nested*: the
        same bounds, the epoch's peaks kept, the fit's halt still in force. Outside, it
        is a phase of its own, with no epoch (``False`` / ``True``).
        """
        if self.in_fit:
            self.phase = phase
            self.nested = True
            return False
        self.epoch = None
        self._enter(phase)
        return True

    def end_predict(self) -> None:
        """``on_predict_end`` (or ``on_test_end`` of a nested ``evaluate()``): a call
        inside a fit is over, training goes on."""
        if self.in_fit:
            self.phase = "train"
        self.nested = False

    def end_epoch(self, epoch: int) -> bool:
        """``on_epoch_end``; returns whether this epoch's ``val_*`` logs must be NaN.

        Validation after (or cut short by) a halt covers a batch or so: a ``val_loss``
        from it would mislead EarlyStopping and ``ModelCheckpoint(save_best_only)``.
        """
        self.phase = "train"
        self.nested = False
        return self.halted_epoch == epoch

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_halted = False
        self.nested = False

    # -------------------------------------------------------------------- checks
    @property
    def checks_paused(self) -> bool:
        """No check (and no batch) after a halt: of this phase, or of the whole fit."""
        return self.phase_halted or (self.in_fit and self.halted)

    def skips_batch_checks(self, multi_worker: bool) -> bool:
        """Several workers check no validation batch: one stopping alone stalls the rest."""
        return self.phase == "validation" and multi_worker

    def warn_once_per_crossing(self, metrics: list[str]) -> list[str]:
        """``on_exceed="warn"``: the crossings to warn about now (new since they cleared)."""
        self.warned &= set(metrics) | {LOW_MEMORY}
        new = [m for m in metrics if m not in self.warned]
        self.warned.update(new)
        return new

    def warn_low_memory(self, low: bool | None) -> bool:
        """Whether to warn that little memory is left (once until it recovers)."""
        if low and LOW_MEMORY not in self.warned:
            self.warned.add(LOW_MEMORY)
            return True
        if low is False:
            self.warned.discard(LOW_MEMORY)
        return False

    def vote(self, found: bool, any_worker: Callable[[bool], bool]) -> bool:
        """Whether to halt: inside a fit every worker votes at this same step, so all
        stop together or none does; outside a fit each process decides alone."""
        return any_worker(found) if self.in_fit else found

    def halt(self, batch: int | None, on_exceed: str, checkpoint: bool) -> HaltPlan:
        """A bound was crossed; ``on_exceed`` is ``"stop"`` or ``"raise"``, and
        ``checkpoint`` says whether a ``checkpoint_path`` was given.

        ``batch`` is ``None`` for a check between batches (before validation, at epoch
        end). Halted before a training batch with ``"stop"``, Keras still runs that
        batch; the checkpoint is saved once, now, while the room for it is reserved
        (issue #23, guard/headroom.py): it holds the model from before that batch.

        A nested ``evaluate()``/``predict()`` (inside the fit) raises whatever
        ``on_exceed`` says, as outside a fit, after the fit's save; the fit stays marked
        running: a caller that catches the error trains on until ``stop_training``.
        """
        standalone = not self.in_fit
        nested = self.in_fit and self.nested
        self.phase_halted = True
        if not standalone:
            self.halted = True
            self.halted_epoch = self.epoch
        raise_error = standalone or nested or on_exceed == "raise"
        if raise_error and not nested:
            self.in_fit = False  # the fit ends here: Keras will not call on_train_end
        return HaltPlan(
            standalone=standalone,
            save=not standalone and checkpoint,
            stop_evaluating=self.phase == "validation",
            raise_error=raise_error,
            stop_training=not standalone and (nested or not raise_error),
            verb="stopping training" if not raise_error else "raising",
            nested=nested,
        )


def fit_is_running(model: Any) -> bool:
    """Whether a ``fit`` of ``model`` is on the call stack now.

    Keras skips ``on_train_end`` when ``fit`` raises (Ctrl-C, an OOM, another callback's
    error) and offers no hook for it, so "in a fit" cannot be a flag that only
    ``on_train_end`` clears: a later ``evaluate()`` would pass for that fit's validation
    pass and return a truncated result instead of raising. The call stack is the one
    record of a running fit that a raise cannot leave stale; it is walked only where a
    fit is marked running (``evaluate()``/``predict()`` begin), never per batch.

    Example:
        >>> fit_is_running(model)  # from a callback hook inside model.fit(...)
        True
    """
    frame: Any = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            return True
        frame = frame.f_back
    return False


def calling_callback_list(list_type: type) -> Any:
    """The innermost ``list_type`` (Keras's ``CallbackList``) on the call stack, or ``None``.

    ``fit`` passes its own callback list to its validation pass; an ``evaluate()`` or
    ``predict()`` that another callback calls with ``callbacks=[guard]`` gets a new one.
    So the list that calls ``on_test_begin`` tells the fit's validation pass from such a
    nested call: compared (by identity) with the one that called ``on_train_begin``.
    Walked once per phase begin, never per batch.

    Example:
        >>> calling_callback_list(keras.callbacks.CallbackList)  # from a guard's hook
        <keras.src.callbacks.callback_list.CallbackList object at 0x...>
    """
    frame: Any = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, list_type):
            return owner
        frame = frame.f_back
    return None
