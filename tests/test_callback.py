"""MemGuardCallback in real fit() runs, with TensorBoard event files read back."""

import copy
import os
import pickle
import threading
import warnings

import keras
import numpy as np
import pytest
from training import Leak, read_scalars, read_texts, run_script, tiny_data, tiny_model

from keras_memguard import MemGuardCallback, MemoryLimitExceededError
from keras_memguard.errors import MemGuardWarning
from keras_memguard.guard.callback import LOG_KEYS

MIB = 2**20

# The epoch tags on a machine without GPUs and without a container limit, with
# max_process_memory set (the bounds are logged so charts can show usage against them).
BASE_TAGS = {
    "memory/process_rss_mib",
    "memory/process_tree_mib",
    "memory/process_children_mib",
    "memory/process_children_age_s",
    "memory/process_rss_peak_mib",
    "memory/process_tree_peak_mib",
    "memory/system_available_mib",
    "memory/system_used_percent",
    "memory/swap_used_mib",
    "memory/effective_limit_mib",
    "memory/effective_available_mib",
    "memory/effective_available_min_mib",
    "memory/bound_process_mib",
    "memory/bound_available_mib",
    "memory/predicted_peak_mib",
    "memory/fit_index",  # one run across fits: which fit wrote the epoch
}


@pytest.fixture(scope="module")
def leaky_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("leaky")
    result, stderr = run_script("leaky_training.py", workdir=workdir)
    return workdir, result, stderr


def test_leak_is_halted_before_bound_plus_one_check(leaky_run):
    _, result, stderr = leaky_run
    halt = result["halt"]
    assert halt is not None, "the guard never halted a 25 MiB/batch leak"
    assert halt["metric"] == "process_tree"
    assert halt["bound"] == result["bound"]
    # Issue #23: checked every batch, the halt comes *before* the bound, once the next
    # batch, the batch Keras still runs after a stop and the save would cross it; the
    # process never went past it (a little slack for TensorFlow's own allocations).
    assert halt["value"] <= result["bound"] < halt["value"] + halt["reserve"]
    assert 2 * result["leak"] - 8 * MIB <= halt["reserve"] <= 2 * result["leak"] + 32 * MIB
    assert result["peak"] <= result["bound"] + 16 * MIB
    assert result["stop_training"] is True
    assert result["epochs_run"] == halt["epoch"] + 1  # fit stopped in the halting epoch
    # One clear stderr line with the numbers.
    line = [x for x in stderr.splitlines() if "keras-memguard: stopping training" in x]
    assert len(line) == 1
    assert "max_process_memory" in line[0] and f"epoch {halt['epoch']}" in line[0]
    assert f"batch {halt['batch']}" in line[0] and "guard.keras" in line[0]


def test_checkpoint_loads_and_resumed_fit_continues(leaky_run):
    _, result, _ = leaky_run
    path = result["halt"]["checkpoint"]
    assert path and os.path.exists(path)
    model = keras.models.load_model(path)
    # The checkpoint holds the trained state at the halt, saved once (issue #23): before
    # the batch Keras still runs after a stop, so one step fewer than the model fit returns.
    assert int(model.optimizer.iterations.numpy()) == result["iterations"] - 1 > 0
    x, y = tiny_data(samples=640)
    epoch = result["halt"]["epoch"]
    history = model.fit(x, y, batch_size=32, initial_epoch=epoch, epochs=epoch + 2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert int(model.optimizer.iterations.numpy()) == result["iterations"] - 1 + 2 * 20


def test_tensorboard_events_hold_the_documented_tags(leaky_run):
    workdir, result, _ = leaky_run
    run_dir = os.path.join(workdir, "logs", "memory")
    scalars = read_scalars(run_dir)
    tags = set(scalars)
    container = {t for t in tags if t.startswith("memory/container_")}
    assert tags - container == BASE_TAGS
    steps = [step for step, _ in scalars["memory/process_tree_mib"]]
    assert steps == list(range(result["epochs_run"]))
    bound_mib = scalars["memory/bound_process_mib"][0][1]
    assert bound_mib == pytest.approx(result["bound"] / MIB, abs=0.01)
    halt_texts = read_texts(run_dir, "memory/halt")
    assert len(halt_texts) == 1 and "max_process_memory" in halt_texts[0]


def test_history_and_csv_hold_the_memory_keys(leaky_run):
    workdir, result, _ = leaky_run
    assert set(LOG_KEYS) <= set(result["history_keys"])
    with open(os.path.join(workdir, "history.csv")) as f:
        header = f.readline()
    assert all(key in header for key in LOG_KEYS)


def fit(model, callbacks, epochs=2, **kwargs):
    x, y = tiny_data()
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


def test_raise_saves_then_raises_with_the_snapshot(tmp_path):
    guard = MemGuardCallback(
        max_process_memory=MIB,
        on_exceed="raise",
        checkpoint_path=tmp_path / "weights" / "g.weights.h5",
        check_every_n_batches=1,
        verbose=0,
    )
    model = tiny_model()
    with pytest.raises(MemoryLimitExceededError) as info:
        fit(model, [guard])
    err = info.value
    assert err.metric == "process_tree" and err.bound == MIB
    assert err.snapshot.process_tree == err.value > MIB
    assert (err.epoch, err.batch) == (0, 0)
    assert "raising" in str(err) and "max_process_memory" in str(err)
    restored = tiny_model()
    restored.load_weights(tmp_path / "weights" / "g.weights.h5")
    for a, b in zip(model.get_weights(), restored.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# Keras runs batch-end hooks in a thread pool on the backends it calls thread safe, but
# only where no callback overrides them without declaring `async_safe`; otherwise the
# training loop waits for every step's logs.
END_HOOKS_IN_POOL = {"tensorflow": False, "jax": True, "torch": True}


def test_guard_keeps_keras_batch_end_hooks_asynchronous_and_checks_on_the_training_thread():
    checks, ends = [], []

    class Checks(MemGuardCallback):
        def _batch_check(self, batch, log_due=False):
            checks.append(threading.get_ident())
            super()._batch_check(batch, log_due)

    class BatchEnds(keras.callbacks.Callback):  # stands for the progress bar
        async_safe = True

        def on_train_batch_end(self, batch, logs=None):
            ends.append(threading.get_ident())

    fit(tiny_model(), [Checks(check_every_n_batches=1), BatchEnds()])
    assert len(checks) == len(ends) == 16  # 2 epochs of 8 batches
    assert set(checks) == {threading.get_ident()}
    in_pool = threading.get_ident() not in ends
    assert in_pool == END_HOOKS_IN_POOL[keras.backend.backend()]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's dispatch runs ahead")
def test_on_jax_a_check_sees_the_steps_dispatched_up_to_the_previous_check():
    import jax

    seen = []

    class Recording(MemGuardCallback):
        def _wait_for_dispatched_steps(self, all_of_them=False):
            previous = self._step_marker  # marks the step dispatched at the last check
            super()._wait_for_dispatched_steps(all_of_them)
            if previous is not None:
                seen.append(previous.is_ready())  # when the check reads memory

    # Steps of a few ms: without waiting, checks run tens of steps ahead of them.
    model = keras.Sequential(
        [keras.Input((1024,)), keras.layers.Dense(2048), keras.layers.Dense(1024)]
    )
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).random((256 * 24, 1024), dtype=np.float32)
    model.fit(x, x, batch_size=256, epochs=1, verbose=0)  # compile first
    guard = Recording(check_every_n_batches=1)
    model.fit(x, x, batch_size=256, epochs=1, verbose=0, callbacks=[guard])
    assert len(seen) >= 20 and all(seen)
    assert isinstance(guard._step_marker, jax.Array)


def test_stop_saves_once_before_the_batch_keras_still_runs(tmp_path):
    guard = MemGuardCallback(
        max_process_memory=MIB, checkpoint_path=tmp_path / "g.keras", check_every_n_batches=1
    )
    model = tiny_model()
    before = [w.copy() for w in model.get_weights()]
    saves = []
    save = model.save
    model.save = lambda *args, **kwargs: saves.append(args) or save(*args, **kwargs)
    history = fit(model, [guard], epochs=3)
    halt = guard.summary.halts[0]
    # Checked before batch 0 and crossed: saved once, then Keras runs that batch and stops.
    assert (halt.epoch, halt.batch, halt.checkpoint) == (0, 0, str(tmp_path / "g.keras"))
    assert len(saves) == 1  # issue #23: not again after that batch
    assert len(history.history["loss"]) == 1 and int(model.optimizer.iterations) == 1
    restored = keras.saving.load_model(tmp_path / "g.keras")
    # The checkpoint is the model at the halt: before the batch Keras ran after it.
    assert int(restored.optimizer.iterations) == 0
    for a, b in zip(before, restored.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # the temporary file was renamed; the halt's evidence is beside it (issue #28)
    assert sorted(os.listdir(tmp_path)) == ["g.keras", "memory_evidence"]


@pytest.mark.parametrize("phase", ["evaluate", "predict"])
def test_model_stays_usable_after_the_guard_raised_in_evaluate_or_predict(phase):
    x, y = tiny_data()
    model = tiny_model()
    fit(model, [], epochs=1)
    run = {
        "evaluate": lambda **kw: model.evaluate(x, y, batch_size=32, verbose=0, **kw),
        "predict": lambda **kw: model.predict(x, batch_size=32, verbose=0, **kw),
    }[phase]
    expected = run()
    # First checked before batch 1, after a batch ran.
    guard = MemGuardCallback(max_process_memory=MIB, check_every_n_batches=2)
    with pytest.raises(MemoryLimitExceededError, match=f"{phase} batch 1"):
        run(callbacks=[guard])
    # JAX's evaluate() and predict() re-attach the model's variables only when their
    # loop ends; a raise from a callback skipped that, and the model was left empty.
    np.testing.assert_allclose(run(), expected, rtol=1e-6)


def test_guard_can_be_deep_copied_and_pickled_as_keras_tuner_and_run_isolated_do(tmp_path):
    guard = MemGuardCallback(max_process_memory="1GiB", log_dir=tmp_path)
    for twin in (copy.deepcopy(guard), pickle.loads(pickle.dumps(guard))):
        assert twin.max_process_memory == guard.max_process_memory
        fit(tiny_model(), [twin], epochs=1)
        assert twin.summary.epochs == 1


def test_warn_warns_once_per_crossing_and_trains_on():
    guard = MemGuardCallback(
        max_process_memory=MIB, on_exceed="warn", check_every_n_batches=1, verbose=0
    )
    with pytest.warns(MemGuardWarning, match="on_exceed='warn'") as record:
        history = fit(tiny_model(), [guard], epochs=3)
    crossing = [w for w in record if "on_exceed='warn'" in str(w.message)]
    assert len(crossing) == 1  # stays above the bound: one crossing, one warning
    assert len(history.history["loss"]) == 3
    assert [h.action for h in guard.summary.halts] == ["warn"]


def test_stop_without_checkpoint_says_nothing_was_saved(capsys):
    model = tiny_model()
    guard = MemGuardCallback(max_process_memory=MIB, check_every_n_batches=1, verbose=0)
    history = fit(model, [guard], epochs=5)
    assert len(history.history["loss"]) == 1
    assert "no checkpoint_path was given" in capsys.readouterr().err
    assert model.stop_training


@pytest.mark.tensorflow
def test_record_if_trap_with_keras_tensorboard_update_freq(tmp_path):
    # Keras's TensorBoard(update_freq=3) installs a global record condition; with 4
    # steps per epoch and validation, it is False from epoch 1 on. The guard's epoch
    # scalars must be written regardless.
    x, y = tiny_data(samples=128)
    model = tiny_model()
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=3,
        verbose=0,
        validation_data=(x[:32], y[:32]),
        callbacks=[
            keras.callbacks.TensorBoard(str(tmp_path), update_freq=3),
            MemGuardCallback(log_dir=tmp_path, verbose=0),
        ],
    )
    scalars = read_scalars(str(tmp_path / "memory"))
    assert [s for s, _ in scalars["memory/process_tree_mib"]] == [0, 1, 2]
    assert {"train", "validation", "memory"} <= set(os.listdir(tmp_path))


def test_one_instance_two_fits_resets_per_run_state(tmp_path):
    model = tiny_model()
    guard = MemGuardCallback(
        max_process_memory=MIB,
        check_every_n_batches=1,
        verbose=0,
        checkpoint_path=tmp_path / "g.keras",
    )
    first = fit(model, [guard], epochs=3)
    assert len(first.history["loss"]) == 1 and len(guard.summary.halts) == 1
    second = fit(model, [guard], epochs=3)
    # The second run is guarded afresh: it halts again rather than staying "halted".
    assert len(second.history["loss"]) == 1
    assert len(guard.summary.halts) == 1 and guard.summary.epochs == 1

    quiet = MemGuardCallback(verbose=0)
    fit(model, [quiet], epochs=3)
    fit(model, [quiet], epochs=2)
    assert quiet.summary.epochs == 2 and quiet.summary.halts == []


def test_leak_detection_warns_with_slope_and_projection(tmp_path):
    guard = MemGuardCallback(
        log_dir=tmp_path,
        max_process_memory="95%",
        leak_threshold="4MiB",
        leak_patience=2,
        leak_warmup_epochs=1,
        verbose=0,
    )
    with pytest.warns(MemGuardWarning, match=r"grows by \d+\.\d MiB/epoch") as record:
        fit(tiny_model(), [Leak(mib_per_epoch=24), guard], epochs=6)
    message = next(str(w.message) for w in record if "MiB/epoch" in str(w.message))
    assert "reaches max_process_memory" in message and "around epoch" in message
    assert 15 < guard.summary.leak_slope_mib_per_epoch < 35
    slopes = read_scalars(str(tmp_path / "memory"))["memory/leak_slope_mib_per_epoch"]
    assert [s for s, _ in slopes] == [3, 4, 5]  # from the third post-warm-up epoch on


def test_no_leak_no_warning():
    guard = MemGuardCallback(leak_threshold="64MiB", leak_patience=2, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemGuardWarning)
        fit(tiny_model(), [guard], epochs=5)


def test_summary_and_release_at_train_end(capsys):
    import gc

    class GarbageAtTrainEnd(keras.callbacks.Callback):
        """Leaves 200 MiB in a reference cycle: only the collector frees it."""

        def on_train_end(self, logs=None):
            gc.disable()  # no automatic collection before the guard's own
            cycle: list = [np.ones(200 * MIB, dtype=np.uint8)]
            cycle.append(cycle)

    guard = MemGuardCallback(verbose=1)
    try:
        fit(tiny_model(), [GarbageAtTrainEnd(), guard], epochs=2)
    finally:
        gc.enable()
    summary = guard.summary
    assert summary.epochs == 2
    # The guard sampled the garbage, then its full release (the tree grew by more than
    # max(64 MiB, 5%)) collected the cycle and gave its pages back.
    assert summary.peak_process_tree >= summary.start_process_tree + 190 * MIB
    release = summary.release
    assert release is not None and release.generation == 2 and release.collected >= 1
    assert release.rss_before - release.rss_after >= 150 * MIB
    assert summary.end_process_tree <= summary.peak_process_tree - 150 * MIB
    assert "keras-memguard: 2 epoch(s)" in capsys.readouterr().err


def test_batch_level_logging(tmp_path):
    guard = MemGuardCallback(log_dir=tmp_path, log_every_n_batches=2, verbose=0)
    fit(tiny_model(), [guard], epochs=2)  # 8 batches per epoch
    scalars = read_scalars(str(tmp_path / "memory"))
    steps = [s for s, _ in scalars["memory_batch/process_tree_mib"]]
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16]


def test_custom_scalars_layout_is_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    fit(tiny_model(), [MemGuardCallback(log_dir=tmp_path, verbose=0)], epochs=1)
    acc = EventAccumulator(str(tmp_path / "memory"), size_guidance={"tensors": 0})
    acc.Reload()
    event = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0]
    layout = layout_pb2.Layout()
    layout.ParseFromString(event.tensor_proto.string_val[0])
    charts = {chart.title: chart.multiline.tag[0] for chart in layout.category[0].chart}
    assert set(charts) == {
        "Process memory against its bound (MiB)",
        "Predicted peak against the measured peak (MiB)",  # issue #25
        "Available memory against its floor (MiB)",
    }  # no GPU, no GPU chart
    predicted = charts["Predicted peak against the measured peak (MiB)"]
    assert "predicted_peak_mib" in predicted and "process_tree_peak_mib" in predicted
    # The bound shares the usage chart; the machine's total would flatten it, so stays out.
    assert "bound_process_mib" in charts["Process memory against its bound (MiB)"]
    assert "effective_limit" not in charts["Process memory against its bound (MiB)"]


@keras.saving.register_keras_serializable(package="memguard_tests")
class FailingSaveDense(keras.layers.Dense):
    """A Dense layer whose variables fail to save while ``fail`` is set (out of memory)."""

    fail = False

    def save_own_variables(self, store):
        if FailingSaveDense.fail:
            raise MemoryError("simulated: no memory left to save")
        super().save_own_variables(store)


@pytest.mark.parametrize("name", ["g.keras", "g.weights.h5"])
def test_a_save_that_fails_keeps_the_previous_checkpoint(tmp_path, name):
    path = tmp_path / name

    def model():
        layers = [keras.Input((8,)), FailingSaveDense(4), keras.layers.Dense(2)]
        built = keras.Sequential(layers)
        built.compile("adam", "sparse_categorical_crossentropy")
        return built

    def halted_fit(built):
        guard = MemGuardCallback(max_process_memory=MIB, checkpoint_path=path, verbose=0)
        fit(built, [guard], epochs=1)
        return guard.summary.halts[0]

    first = model()
    at_halt = [w.copy() for w in first.get_weights()]  # halted before batch 0
    assert halted_fit(first).checkpoint == str(path)
    good = path.read_bytes()
    FailingSaveDense.fail = True
    try:
        with pytest.warns(MemGuardWarning, match="COULD NOT SAVE .* previous checkpoint"):
            assert halted_fit(model()).checkpoint is None
    finally:
        FailingSaveDense.fail = False
    assert path.read_bytes() == good  # issue #23: the failed save replaced nothing
    # and left no temporary file (the halt's evidence is beside it: issue #28)
    assert sorted(os.listdir(tmp_path)) == [name, "memory_evidence"]
    restored = model()
    if name.endswith(".keras"):
        restored = keras.saving.load_model(path)
    else:
        restored.load_weights(path)
    for a, b in zip(at_halt, restored.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
