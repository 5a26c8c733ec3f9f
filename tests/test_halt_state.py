"""The halt's state machine (keras_memguard/guard/halt.py), each transition without Keras.

The events are those MemGuardCallback's hooks send; the cases include each one the git
log fixed in the callback: a halt at the check of the epoch's last batch (before
validation), one save only although Keras runs a batch once stopped, a raise in
evaluate()/predict(), predict() called inside fit, and a guard reused after a fit that
raised.
"""

from __future__ import annotations

import pytest

from keras_memguard.guard.halt import HaltPlan, HaltState, fit_is_running


def fit_state(epoch: int = 0) -> HaltState:
    state = HaltState()
    state.begin_fit()
    state.begin_epoch(epoch)
    return state


def test_a_fit_starts_in_training_and_checks():
    state = fit_state(epoch=2)
    assert (state.in_fit, state.phase, state.epoch) == (True, "train", 2)
    assert not state.checks_paused and not state.halted


@pytest.mark.parametrize("on_exceed", ["stop", "raise"])
def test_a_halt_before_a_training_batch_saves_and_stops_or_raises(on_exceed):
    state = fit_state(epoch=1)
    plan = state.halt(batch=4, on_exceed=on_exceed, checkpoint=True)
    stop = on_exceed == "stop"
    assert plan == HaltPlan(
        standalone=False,
        save=True,
        stop_evaluating=False,
        raise_error=not stop,
        stop_training=stop,
        verb="stopping training" if stop else "raising",
    )
    assert (state.halted, state.halted_epoch, state.phase_halted) == (True, 1, True)
    assert state.checks_paused
    # With "stop" Keras runs the batch it was about to run: no second save (issue #23).
    assert not hasattr(state, "save_again")
    # With "raise" the fit ends here: Keras will not call on_train_end.
    assert state.in_fit is stop


def test_no_save_without_a_checkpoint_path():
    state = fit_state()
    plan = state.halt(batch=3, on_exceed="stop", checkpoint=False)
    assert not plan.save and plan.stop_training


def test_a_halt_at_the_epochs_last_check_before_validation_cuts_validation():
    state = fit_state(epoch=0)
    # on_test_begin checks the epoch's last batch (batch=None) before validating
    plan = state.halt(batch=None, on_exceed="stop", checkpoint=True)
    assert plan.save and plan.stop_training and not plan.stop_evaluating
    assert state.begin_validation() is True  # stop the validation pass at once
    assert state.phase == "validation" and state.checks_paused
    assert state.end_epoch(0) is True  # its partial val_* become NaN
    assert state.phase == "train"


def test_validation_without_a_halt_runs_and_its_logs_stay():
    state = fit_state(epoch=0)
    assert state.begin_validation() is False
    assert not state.checks_paused
    assert state.end_epoch(0) is False


def test_a_halt_during_validation_stops_it_and_saves_once():
    state = fit_state(epoch=1)
    state.begin_validation()
    plan = state.halt(batch=2, on_exceed="stop", checkpoint=True)
    assert plan.save and plan.stop_evaluating and plan.stop_training
    assert state.end_epoch(1) is True
    assert state.end_epoch(2) is False  # a later epoch's logs are its own


def test_several_workers_skip_the_validation_batch_checks_only():
    state = fit_state()
    assert not state.skips_batch_checks(multi_worker=True)
    state.begin_validation()
    assert state.skips_batch_checks(multi_worker=True)
    assert not state.skips_batch_checks(multi_worker=False)


@pytest.mark.parametrize("phase", ["evaluate", "predict"])
@pytest.mark.parametrize("on_exceed", ["stop", "raise"])
def test_evaluate_or_predict_outside_fit_raise_and_save_nothing(phase, on_exceed):
    state = HaltState()
    assert state.begin_standalone(phase) is True  # a phase of its own
    assert (state.phase, state.epoch, state.in_fit) == (phase, None, False)
    plan = state.halt(batch=5, on_exceed=on_exceed, checkpoint=True)
    assert plan.standalone and plan.raise_error and plan.verb == "raising"
    assert not plan.save and not plan.stop_training
    assert state.phase_halted and not state.halted
    # the next call starts afresh
    assert state.begin_standalone(phase) is True
    assert not state.phase_halted and not state.checks_paused


def test_predict_inside_fit_checks_the_same_bounds_and_training_goes_on():
    state = fit_state(epoch=3)
    assert state.begin_standalone("predict") is False  # no new phase: peaks kept
    assert (state.phase, state.epoch, state.in_fit) == ("predict", 3, True)
    state.end_predict()
    assert state.phase == "train"


@pytest.mark.parametrize("on_exceed", ["stop", "raise"])
def test_a_halt_in_predict_inside_fit_raises_saves_once_and_stops_the_fit(on_exceed):
    # Issue #23: a nested predict() raises as outside a fit (no partial result), after
    # the fit's save; a caller that catches the error still ends the fit.
    state = fit_state(epoch=3)
    state.begin_standalone("predict")
    assert state.nested
    plan = state.halt(batch=0, on_exceed=on_exceed, checkpoint=True)
    assert plan.nested and plan.raise_error and not plan.standalone
    assert plan.save and plan.stop_training and not plan.stop_evaluating
    assert (state.halted, state.halted_epoch, state.in_fit) == (True, 3, True)
    state.end_predict()
    assert state.phase == "train" and state.checks_paused and not state.nested


def test_the_validation_pass_is_not_nested_and_a_halt_there_stops_training():
    state = fit_state(epoch=1)
    state.begin_standalone("evaluate")  # another callback's evaluate() ...
    state.end_predict()  # ... ended (on_test_end)
    state.begin_validation()
    assert not state.nested
    plan = state.halt(batch=0, on_exceed="stop", checkpoint=True)
    assert plan.stop_evaluating and plan.stop_training and not plan.raise_error


def test_evaluate_inside_fit_is_checked_and_stopped_after_the_fits_halt():
    state = fit_state()
    state.halt(batch=1, on_exceed="stop", checkpoint=False)
    assert state.begin_standalone("evaluate") is False
    assert state.checks_paused  # its batches stop at once


def test_end_predict_outside_fit_leaves_the_phase():
    state = HaltState()
    state.begin_standalone("predict")
    state.end_predict()
    assert state.phase == "predict"


def test_a_guard_reused_after_a_fit_that_raised_starts_clean():
    state = fit_state(epoch=4)
    state.halt(batch=2, on_exceed="stop", checkpoint=True)
    state.warn_once_per_crossing(["process_tree"])
    # the fit raised (Ctrl-C, an OOM): Keras calls no on_train_end
    state.end_stale_fit()
    assert not state.in_fit
    # evaluate() now is no validation pass: it is a phase of its own
    assert state.begin_standalone("evaluate") is True
    assert not state.checks_paused
    state.begin_fit()
    assert state == HaltState(in_fit=True)


def test_a_raise_in_fit_ends_it_so_a_later_evaluate_is_standalone():
    state = fit_state()
    state.halt(batch=2, on_exceed="raise", checkpoint=True)
    assert not state.in_fit
    assert state.begin_standalone("evaluate") is True
    plan = state.halt(batch=0, on_exceed="raise", checkpoint=True)
    assert plan.standalone and not plan.save


def test_a_fit_that_ended_normally_leaves_its_halt_readable():
    state = fit_state(epoch=1)
    state.halt(batch=2, on_exceed="stop", checkpoint=False)
    state.end_fit()
    assert not state.in_fit and state.halted and state.halted_epoch == 1
    # evaluate() after the fit is checked afresh
    assert state.begin_standalone("evaluate") is True
    assert not state.checks_paused and state.epoch is None


def test_warn_mode_warns_once_per_crossing_and_again_after_it_cleared():
    state = fit_state()
    assert state.warn_once_per_crossing(["process_tree", "gpu0"]) == ["process_tree", "gpu0"]
    assert state.warn_once_per_crossing(["process_tree", "gpu0"]) == []
    assert state.warn_once_per_crossing(["gpu0"]) == []  # process_tree cleared
    assert state.warn_once_per_crossing(["process_tree"]) == ["process_tree"]
    assert not state.halted and not state.checks_paused


def test_the_low_memory_warning_comes_once_until_memory_recovers():
    state = HaltState()
    assert state.warn_low_memory(True)
    assert not state.warn_low_memory(True)
    assert not state.warn_low_memory(None)  # unknown: no change
    state.warn_once_per_crossing([])  # crossings clearing keep the low-memory mark
    assert not state.warn_low_memory(True)
    assert not state.warn_low_memory(False)
    assert state.warn_low_memory(True)


def test_inside_fit_every_worker_votes_outside_each_process_decides_alone():
    votes: list[bool] = []

    def any_worker(found: bool) -> bool:
        votes.append(found)
        return True  # another worker crossed a bound

    state = fit_state()
    assert state.vote(False, any_worker) is True
    assert votes == [False]  # this worker voted even with nothing found
    standalone = HaltState()
    standalone.begin_standalone("evaluate")
    assert standalone.vote(False, any_worker) is False
    assert standalone.vote(True, any_worker) is True
    assert votes == [False]


class Model:
    def fit(self, probe):
        return probe(self)


def test_fit_is_running_sees_only_this_models_fit_on_the_stack():
    model, other = Model(), Model()
    assert model.fit(fit_is_running) is True
    assert model.fit(lambda _: fit_is_running(other)) is False
    assert fit_is_running(model) is False  # a fit that returned or raised


def test_fit_is_running_is_false_after_a_fit_raised():
    model = Model()

    def raising(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.fit(raising)
    assert fit_is_running(model) is False
