"""The constructor reads like a Keras callback: quiet by default, a checkpoint path
checked when the guard is built, logs keys only where nothing else charts them, and a
summary that is an attribute (and prints when called, like `model.summary()`)."""

from __future__ import annotations

import dataclasses
import inspect
import os

import pytest
from training import read_scalars, tiny_data, tiny_model

from keras_memguard import MemGuardCallback
from keras_memguard.guard.arguments import GuardSettings
from keras_memguard.guard.tensorboard import event_files, read_events

pytestmark = pytest.mark.backends
KEY = "memory/process_tree_peak_mib"


def fit(callbacks, epochs=2):
    x, y = tiny_data(samples=64)
    return tiny_model().fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=callbacks)


@pytest.mark.parametrize("name", ["model.h5", "checkpoints/best.H5", "model.hdf5"])
def test_a_path_a_halt_could_not_write_fails_at_construction(tmp_path, name):
    with pytest.raises(ValueError, match=r"`checkpoint_path`.*'\.weights\.h5'"):
        MemGuardCallback(checkpoint_path=tmp_path / name)


def test_plain_h5_says_why_and_what_to_use(tmp_path):
    with pytest.raises(ValueError, match="legacy whole-model format") as error:
        MemGuardCallback(checkpoint_path=tmp_path / "model.h5")
    assert "name.keras" in str(error.value) and "name.weights.h5" in str(error.value)


def test_keras_and_weights_paths_are_kept(tmp_path):
    assert MemGuardCallback(checkpoint_path=tmp_path / "g.keras").checkpoint_path.endswith(".keras")
    assert MemGuardCallback(checkpoint_path=tmp_path / "g.weights.h5").checkpoint_path.endswith(
        ".weights.h5"
    )


def test_every_argument_becomes_the_attribute_of_its_name(tmp_path):
    # guard_settings reads the arguments by name: one missing there would be ignored
    parameters = set(inspect.signature(MemGuardCallback).parameters)
    assert parameters == {f.name for f in dataclasses.fields(GuardSettings)} - {"bounds"}
    guard = MemGuardCallback(
        tmp_path, "8GiB", on_exceed="raise", check_interval=0.5, leak_patience=5, verbose=1
    )
    assert (guard.log_dir, guard.on_exceed, guard.check_interval) == (str(tmp_path), "raise", 0.5)
    assert (guard.leak_patience, guard.verbose, guard.preflight) == (5, 1, "cheap")
    assert guard.bounds.max_process_memory == guard.max_process_memory
    assert guard.max_process_memory.bytes == 8 * 2**30


def test_quiet_by_default_and_the_summary_on_request(capfd):
    guard = MemGuardCallback()
    fit([guard])
    out = capfd.readouterr()
    assert "keras-memguard" not in out.out + out.err
    assert guard.summary.epochs == 2  # an attribute, like History.history
    guard.summary()  # and callable, like model.summary()
    assert "keras-memguard: 2 epoch(s)" in capfd.readouterr().out
    fit([MemGuardCallback(verbose=1)])
    assert "keras-memguard: 2 epoch(s)" in capfd.readouterr().err


def test_logs_keys_only_where_no_memory_run_charts_them(tmp_path):
    assert KEY in fit([MemGuardCallback()]).history  # no log_dir: logs are the place
    history = fit([MemGuardCallback(log_dir=tmp_path / "a")]).history
    assert not [key for key in history if key.startswith("memory/")]
    assert KEY in read_scalars(str(tmp_path / "a" / "memory"))
    assert KEY in fit([MemGuardCallback(log_dir=tmp_path / "b", add_to_logs=True)]).history
    assert KEY not in fit([MemGuardCallback(add_to_logs=False)]).history


@pytest.mark.tensorflow
def test_no_duplicate_chart_in_keras_tensorboard_run(tmp_path):
    import keras

    fit([MemGuardCallback(log_dir=tmp_path), keras.callbacks.TensorBoard(tmp_path)])
    tags = {
        value.tag
        for path in event_files(tmp_path / "train")
        for event in read_events(path)
        for value in event.summary.value
    }
    assert "epoch_loss" in tags
    assert not [tag for tag in tags if "memory" in tag]
    assert os.path.isdir(tmp_path / "memory")
