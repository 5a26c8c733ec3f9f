"""Every phase is guarded: the validation pass inside fit, evaluate() and predict().

A callback leaks 30 MiB per batch of one phase; the same bound that halts training
must halt that phase within one check, and the caller must not get a partial result
that looks whole.
"""

import keras
import numpy as np
import pytest
from training import Leak, read_scalars, tiny_data, tiny_model

from keras_memguard import MemGuardCallback, MemoryLimitExceededError, release_memory, snapshot
from keras_memguard.cli.report import read_run

pytestmark = pytest.mark.backends  # TensorFlow, JAX and PyTorch (issue #23)

MIB = 2**20
LEAK_MIB = 30
MARGIN_MIB = 150
SLACK = 16 * MIB  # Python's and TensorFlow's own allocations between two checks
# Batches a leak needs to cross the bound, with room for the process shrinking a little
# after the bound was taken; far fewer than the 64 to 128 batches of each full pass.
STOPPED_WITHIN = (MARGIN_MIB + 64) // LEAK_MIB + 2


@pytest.fixture(scope="module")
def model():
    """One model for the file, its train, test and predict functions traced once (on JAX
    and PyTorch a first trace's memory would otherwise count as a leak)."""
    model = tiny_model()
    x, y = tiny_data(samples=64)
    # Trace train, test and predict functions at every batch size the tests use: a JAX
    # compile during a guarded fit grows ~60 MiB per batch and reads as a leak.
    for batch_size in (4, 8, 16, 32):
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        model.evaluate(x, y, batch_size=batch_size, verbose=0)
        model.predict(x, batch_size=batch_size, verbose=0)
    return model


@pytest.fixture(autouse=True)
def _trimmed():
    """The next test takes its bound from a process that gave its freed memory back:
    glibc keeps freed 30 MiB blocks in its heap (the mmap threshold rises after one)."""
    yield
    release_memory()


def drop(leak):
    """Frees what ``leak`` holds, back to the system (see ``_trimmed``)."""
    leak.held.clear()
    release_memory()


def guard_above_now(**kwargs):
    bound = snapshot().process_tree + MARGIN_MIB * MIB
    kwargs.setdefault("check_every_n_batches", 1)
    return MemGuardCallback(max_process_memory=bound, verbose=0, **kwargs), bound


def assert_halted_within_one_check(halt, bound, phase):
    assert halt.phase == phase and halt.metric == "process_tree"
    assert halt.bound == bound
    # Issue #23: halted once the next batch (and, after a stop in training, the batch
    # Keras still runs) would cross it, with the save's memory reserved: no later than
    # one batch past the bound, and with no more than that growth held back.
    # (1 MiB: what the process allocates beside the leak between the projection and the
    # check; a PyTorch run under load once read 4 KiB past. A guard that only halts once
    # crossed reads up to a whole 30 MiB batch past.)
    assert halt.value <= bound + MIB and bound < halt.value + halt.reserve
    assert halt.reserve <= 2 * LEAK_MIB * MIB + 2 * SLACK


def test_leak_in_the_validation_pass_is_halted(model, tmp_path):
    x, y = tiny_data(samples=256)
    guard, bound = guard_above_now(checkpoint_path=tmp_path / "g.keras")
    leak = Leak(mib_per_test_batch=LEAK_MIB)
    history = model.fit(
        x,
        y,
        batch_size=32,
        epochs=3,
        verbose=0,
        validation_data=(x, y),
        validation_batch_size=4,  # 64 validation batches: 1.9 GiB if nothing stops it
        callbacks=[leak, guard],
    )
    halt = guard.summary.halts[0]
    assert_halted_within_one_check(halt, bound, "validation")
    assert halt.epoch == 0 and halt.checkpoint == str(tmp_path / "g.keras")
    assert leak.batches["test"] <= STOPPED_WITHIN  # stopped, not run to the end
    assert len(history.history["loss"]) == 1  # training stopped too
    # The cut-short pass's val_loss would mislead EarlyStopping: its figures are NaN.
    val = {k: v for k, v in history.history.items() if k.startswith("val_")}
    assert set(val) == {"val_loss", "val_accuracy"}  # no val_memory/... keys either
    assert all(np.isnan(v[0]) for v in val.values())
    assert "validation batch" in halt.describe()


def test_after_a_training_halt_validation_is_cut_and_kept_out_of_logs(model, tmp_path):
    class LeakFromEpochOne(Leak):
        def on_epoch_begin(self, epoch, logs=None):
            self.mib_per_batch = LEAK_MIB if epoch >= 1 else 0

    x, y = tiny_data(samples=256)
    guard, bound = guard_above_now()
    leak = LeakFromEpochOne()
    best = tmp_path / "best.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(best, monitor="val_loss", save_best_only=True)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5)
    history = model.fit(
        x,
        y,
        batch_size=8,  # 32 training batches: the leak crosses the bound mid-epoch 1
        epochs=4,
        verbose=0,
        validation_data=(x, y),
        validation_batch_size=4,  # 64 validation batches in a full pass
        callbacks=[leak, guard, checkpoint, stopper],
    )
    halt = guard.summary.halts[0]
    assert_halted_within_one_check(halt, bound, "train")
    assert halt.epoch == 1
    assert leak.batches["test"] == 64 + 1  # epoch 0's full pass; after the halt, one batch
    assert len(history.history["loss"]) == 2
    first, halted = history.history["val_loss"]
    assert np.isfinite(first) and np.isnan(halted)
    # save_best_only and EarlyStopping kept epoch 0's figure as the best: the one-batch
    # val_loss of the halted epoch never counted as an improvement.
    assert checkpoint.best == pytest.approx(first) and stopper.best == pytest.approx(first)
    assert best.exists()  # from epoch 0


@pytest.mark.parametrize("on_exceed", ["stop", "raise"])
def test_leak_during_evaluate_raises_instead_of_partial_metrics(model, on_exceed, capsys):
    x, y = tiny_data(samples=512)
    guard, bound = guard_above_now(on_exceed=on_exceed)
    leak = Leak(mib_per_test_batch=LEAK_MIB)
    with pytest.raises(MemoryLimitExceededError) as info:
        model.evaluate(x, y, batch_size=4, verbose=0, callbacks=[leak, guard])
    err = info.value
    assert err.metric == "process_tree" and err.bound == bound and err.epoch is None
    assert leak.batches["test"] <= STOPPED_WITHIN
    assert_halted_within_one_check(guard.summary.halts[0], bound, "evaluate")
    assert "evaluate() gives no partial result" in capsys.readouterr().err
    # The process goes on: the leak released, the same guard lets a clean run through.
    drop(leak)
    guard.bounds = guard.bounds  # unchanged bound
    results = model.evaluate(x[:64], y[:64], batch_size=32, verbose=0, callbacks=[guard])
    assert len(results) == 2


def test_leak_during_predict_raises_instead_of_truncated_predictions(model):
    x, _ = tiny_data(samples=512)
    guard, bound = guard_above_now()
    leak = Leak(mib_per_predict_batch=LEAK_MIB)
    with pytest.raises(MemoryLimitExceededError) as info:
        model.predict(x, batch_size=4, verbose=0, callbacks=[leak, guard])
    assert info.value.metric == "process_tree"
    assert leak.batches["predict"] <= STOPPED_WITHIN
    assert_halted_within_one_check(guard.summary.halts[0], bound, "predict")
    drop(leak)
    assert model.predict(x[:64], verbose=0, callbacks=[guard]).shape == (64, 2)


def test_warn_mode_in_predict_warns_and_returns_everything(model):
    x, _ = tiny_data(samples=64)
    guard = MemGuardCallback(
        max_process_memory=MIB, on_exceed="warn", check_every_n_batches=1, verbose=0
    )
    with pytest.warns(Warning, match="predict continues because on_exceed='warn'"):
        out = model.predict(x, batch_size=8, verbose=0, callbacks=[guard])
    assert out.shape == (64, 2)
    assert [h.phase for h in guard.summary.halts] == ["predict"]


def test_default_time_based_check_halts_a_leak_mid_epoch(model):
    # No check_every_n_batches: the default checks every 0.1 s. Batches take ~20 ms.
    class Slow(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            import time

            time.sleep(0.02)

    x, y = tiny_data(samples=64 * 8)
    bound = snapshot().process_tree + MARGIN_MIB * MIB
    guard = MemGuardCallback(max_process_memory=bound, verbose=0)
    assert guard.check_every_n_batches is None and guard.check_interval == 0.1
    leak = Leak(mib_per_batch=10)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[Slow(), leak, guard])
    halt = guard.summary.halts[0]
    assert halt.phase == "train" and halt.epoch == 0
    assert halt.batch is not None and halt.batch < 63  # mid-epoch, not at its end
    # Issue #23: the time-based checks (0.1 s, ~6 batches of 10 MiB) give way to a check
    # per batch as the bound nears: halted before it, not up to 6 batches past it.
    # (1 MiB: what the process allocates beside the leak between the projection and the
    # check; a PyTorch run under load once read 4 KiB past. A guard that only halts once
    # crossed reads up to a whole 30 MiB batch past.)
    assert halt.value <= bound + MIB and bound < halt.value + halt.reserve
    assert len(history.history["loss"]) == 1


def test_evaluate_after_a_fit_that_raised_is_guarded_as_evaluate(model):
    x, y = tiny_data(samples=256)
    guard = MemGuardCallback(
        max_process_memory=MIB, on_exceed="raise", check_every_n_batches=1, verbose=0
    )
    with pytest.raises(MemoryLimitExceededError):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[guard])
    with pytest.raises(MemoryLimitExceededError):
        model.evaluate(x, y, verbose=0, callbacks=[guard])
    assert [h.phase for h in guard.summary.halts] == ["train", "evaluate"]


def test_predict_inside_fit_keeps_the_epoch_peaks_and_the_training_phase(model):
    class PredictEachEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.predict(x[:32], verbose=0, callbacks=[guard])

    x, y = tiny_data(samples=128)
    guard = MemGuardCallback(check_every_n_batches=1, verbose=0)
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[guard, PredictEachEpoch()])
    assert len(history.history["loss"]) == 2 and guard.summary.halts == []
    assert guard.summary.epochs == 2
    assert all(v > 0 for v in history.history["memory/process_tree_peak_mib"])


def test_evaluate_after_a_fit_that_raised_is_not_taken_for_its_validation_pass(model):
    # Keras skips on_train_end when fit raises: the guard must not stay "in fit" and
    # hand a later evaluate() a truncated result (found in review).
    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("boom")

    x, y = tiny_data(samples=128)
    guard = MemGuardCallback(check_every_n_batches=1, verbose=0)
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[guard, Boom()])
    tight = MemGuardCallback(check_every_n_batches=1, verbose=0, max_process_memory=2**20)
    guard.bounds = tight.bounds  # now every check crosses
    with pytest.raises(MemoryLimitExceededError):
        model.evaluate(x, y, verbose=0, callbacks=[guard])


def test_a_raised_fit_leaves_no_writer_open_and_the_next_fit_continues_its_run(model, tmp_path):
    import os

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("boom")

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    x, y = tiny_data(samples=128)
    guard = MemGuardCallback(log_dir=str(tmp_path), check_every_n_batches=1, verbose=0)
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[guard, Boom()])
    model.fit(x, y, epochs=1, verbose=0, callbacks=[guard])
    assert guard._writer is None
    runs = sorted(d for d in os.listdir(tmp_path) if d.startswith("memory"))
    assert runs == ["memory", "memory_fits"], runs
    # the raised fit wrote no epoch; the next one is fit 2, its epoch at step 0
    assert read_scalars(str(tmp_path / "memory"))["memory/fit_index"] == [(0, 2.0)]
    assert sorted(read_run(str(tmp_path / "memory_fits")).fit_runs) == [2]


@pytest.mark.parametrize("call", ["predict", "evaluate"])
def test_predict_or_evaluate_inside_fit_raises_instead_of_a_partial_result(model, call, tmp_path):
    # Issue #23: another callback samples predictions each epoch with the guard passed
    # (image logging). Keras builds a new callback list for that call; a crossing in it
    # must raise as outside fit, not hand back 28 of 256 rows. The fit's own validation
    # pass (same fit, validation_data) stays a validation pass: it runs whole.
    x, y = tiny_data(samples=256)
    leak = Leak(mib_per_test_batch=LEAK_MIB, mib_per_predict_batch=LEAK_MIB)
    results = []

    class SampleEachEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                if call == "predict":
                    out = self.model.predict(x, batch_size=4, verbose=0, callbacks=[leak, guard])
                else:
                    out = self.model.evaluate(
                        x, y, batch_size=4, verbose=0, callbacks=[leak, guard]
                    )
                results.append(out)

    guard, bound = guard_above_now(checkpoint_path=tmp_path / "g.keras")
    validation = Leak()  # counts the fit's own validation batches; leaks nothing
    with pytest.raises(MemoryLimitExceededError) as info:
        model.fit(
            x,
            y,
            batch_size=32,
            epochs=3,
            verbose=0,
            validation_data=(x[:64], y[:64]),
            validation_batch_size=32,
            callbacks=[validation, guard, SampleEachEpoch()],
        )
    assert results == []  # no partial result came back
    assert info.value.epoch == 1 and info.value.metric == "process_tree"
    halt = guard.summary.halts[0]
    assert_halted_within_one_check(halt, bound, call)
    assert leak.batches["predict" if call == "predict" else "test"] <= STOPPED_WITHIN
    assert validation.batches["test"] == 2 * 2  # both epochs' validation passes ran whole
    # The fit is halted too: its model was saved, and it loads.
    assert halt.checkpoint == str(tmp_path / "g.keras")
    restored = keras.saving.load_model(tmp_path / "g.keras")
    assert restored.predict(x[:8], verbose=0).shape == (8, 2)


def _open_files_under(directory):
    """Paths under ``directory`` this process holds open (its /proc/self/fd links)."""
    import os

    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            held.append(target)
    return held


def test_after_a_fit_that_raised_tracing_stops_and_files_close_without_reusing_the_guard(
    model, tmp_path
):
    # Issue #23: Keras calls no hook when fit raises. The guard's watchdog thread sees
    # the fit leave the training thread's stack and ends what the fit left running:
    # tracemalloc (1.3-2x slower Python) and the memory run's event file.
    import time
    import tracemalloc

    seen = {}

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:  # tracing starts at epoch 0's end
                seen["tracing"] = tracemalloc.is_tracing()
                seen["open"] = _open_files_under(tmp_path)
                raise RuntimeError("boom")

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    x, y = tiny_data(samples=64)  # the shapes the fixture traced: no retrace under tracing
    guard = MemGuardCallback(log_dir=str(tmp_path), trace_leaks=True, leak_warmup_epochs=0)
    assert not tracemalloc.is_tracing()
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[guard, Boom()])
    assert seen["tracing"] and any("events.out.tfevents" in p for p in seen["open"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (tracemalloc.is_tracing() or _open_files_under(tmp_path)):
        time.sleep(0.1)
    assert not tracemalloc.is_tracing()
    assert _open_files_under(tmp_path) == []
