"""MemGuardCallback when things go wrong: bad arguments, failing probes, unwritable output."""

import os
import shutil
import warnings

import keras
import pytest
from conftest import GIB
from training import read_scalars, tiny_data, tiny_model

from keras_memguard import MemGuardCallback
from keras_memguard.errors import MemGuardWarning
from keras_memguard.probes import cgroup as container_memory
from keras_memguard.probes import nvml
from keras_memguard.probes.cgroup import CgroupReader

MIB = 2**20


def fit(model, callbacks, epochs=2):
    x, y = tiny_data()
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_process_memory": 0}, "max_process_memory"),
        ({"max_process_memory": -1}, "max_process_memory"),
        ({"max_process_memory": 1.5}, "max_process_memory"),
        ({"min_available_memory": "120%"}, "min_available_memory"),
        ({"max_gpu_memory": "lots"}, "max_gpu_memory"),
        ({"on_exceed": "explode"}, "on_exceed"),
        ({"checkpoint_path": "model.pt"}, "checkpoint_path"),
        ({"check_interval": -1}, "check_interval"),
        ({"check_every_n_batches": 0}, "check_every_n_batches"),
        ({"log_every_n_batches": 1.5}, "log_every_n_batches"),
        ({"leak_threshold": "10%"}, "leak_threshold"),
        ({"leak_patience": 0}, "leak_patience"),
        ({"leak_warmup_epochs": -1}, "leak_warmup_epochs"),
        ({"emergency_available_memory": 2.0}, "emergency_available_memory"),
    ],
)
def test_bad_arguments_fail_in_init_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`") as info:
        MemGuardCallback(**kwargs)
    assert f"{name}=" in str(info.value)


def test_checkpoint_path_whose_directory_cannot_exist(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"`checkpoint_path`.*not a writable directory"):
        MemGuardCallback(checkpoint_path=blocker / "sub" / "guard.keras")
    # A directory that does not exist yet but can be created is fine.
    MemGuardCallback(checkpoint_path=tmp_path / "new" / "deeper" / "guard.keras")


def test_unwritable_log_dir_warns_once_and_training_continues(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    guard = MemGuardCallback(log_dir=blocker / "logs", verbose=0)
    with pytest.warns(MemGuardWarning, match="cannot write TensorBoard logs") as record:
        history = fit(tiny_model(), [guard], epochs=2)
    assert len([w for w in record if issubclass(w.category, MemGuardWarning)]) == 1
    assert len(history.history["loss"]) == 2
    assert "memory/process_tree_peak_mib" in history.history


def test_log_dir_vanishing_mid_run_does_not_stop_training(tmp_path):
    log_dir = tmp_path / "logs"

    class RemoveLogs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                shutil.rmtree(log_dir)

    guard = MemGuardCallback(log_dir=log_dir, verbose=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        history = fit(tiny_model(), [RemoveLogs(), guard], epochs=3)
    assert len(history.history["loss"]) == 3
    # The event file stays open: on Linux writing to an unlinked file succeeds, so the
    # run neither warns nor recreates the directory behind the user's back.
    assert [w for w in record if issubclass(w.category, MemGuardWarning)] == []
    assert not os.path.exists(log_dir)


def test_checkpoint_that_cannot_be_written_still_halts_loudly(tmp_path, capsys):
    path = tmp_path / "guard.keras"
    guard = MemGuardCallback(
        max_process_memory=MIB, checkpoint_path=path, check_every_n_batches=1, verbose=0
    )
    path.mkdir()  # saving onto a directory fails
    with pytest.warns(MemGuardWarning, match="COULD NOT SAVE"):
        history = fit(tiny_model(), [guard], epochs=3)
    assert len(history.history["loss"]) == 1  # halted all the same
    err = capsys.readouterr().err
    assert "COULD NOT SAVE the checkpoint" in err and "stopping training" in err
    assert guard.summary.halts[0].checkpoint is None


def test_unreadable_cgroup_files_warn_once_and_training_continues(tmp_path, monkeypatch):
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    for name, text in [
        ("memory.limit_in_bytes", "9223372036854771712"),
        ("memory.stat", "total_inactive_file 0"),
        ("memory.oom_control", "oom_kill 0"),
    ]:
        (root / "memory" / name).write_text(text + "\n")
    (root / "memory" / "memory.usage_in_bytes").mkdir()  # unreadable as a file
    (tmp_path / "proc_cgroup").write_text("5:memory:/\n")
    monkeypatch.setattr(
        container_memory, "_default_reader", CgroupReader(str(root), str(tmp_path / "proc_cgroup"))
    )
    guard = MemGuardCallback(check_every_n_batches=1, verbose=0)
    with pytest.warns(MemGuardWarning, match="cgroup") as record:
        history = fit(tiny_model(), [guard], epochs=2)
    assert len([w for w in record if "cgroup" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 2


def test_nvml_failing_mid_run_warns_once_and_training_continues(fake_nvml, tmp_path, monkeypatch):
    monkeypatch.setattr(nvml, "RETRY_FIRST_S", 0.0)  # retry at the next sample
    nvml.reset()

    class LoseNvmlForEpochOne(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            fake_nvml.memory_reads_left = 0 if epoch == 1 else None

    guard = MemGuardCallback(log_dir=tmp_path, check_every_n_batches=1, verbose=0)
    with pytest.warns(MemGuardWarning, match="cannot read GPU memory") as record:
        history = fit(tiny_model(), [LoseNvmlForEpochOne(), guard], epochs=3)
    assert len([w for w in record if "GPU memory" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 3
    # GPU figures are back once NVML answers again (not off for the rest of the process).
    steps = [s for s, _ in read_scalars(str(tmp_path / "memory"))["memory/gpu0_process_mib"]]
    assert steps == [0, 2]


def test_gpu_metrics_and_gpu_bound_through_fake_nvml(fake_nvml, tmp_path):
    # This process holds 1 GiB on GPU 0 (fake); the bound is 5% of 16 GiB = 0.8 GiB.
    guard = MemGuardCallback(log_dir=tmp_path, max_gpu_memory=0.05, verbose=0)
    history = fit(tiny_model(), [guard], epochs=3)
    assert len(history.history["loss"]) == 1
    halt = guard.summary.halts[0]
    # No framework allocator on this CPU machine: the bound falls to NVML's figure for
    # this process, and the halt says which figure crossed.
    assert halt.metric == "gpu0_process" and halt.value == GIB
    assert halt.bound == int(16 * GIB * 0.05)
    assert "gpu0_process 1.0 GiB crossed" in halt.describe()
    # Keras logs get only allocator peaks; NVML's figures live in the memory run.
    assert not [k for k in history.history if k.startswith("memory/gpu")]
    tags = set(read_scalars(str(tmp_path / "memory")))
    assert {
        "memory/gpu0_device_used_mib",
        "memory/gpu0_device_total_mib",
        "memory/gpu0_process_mib",
        "memory/gpu1_device_used_mib",
        "memory/gpu0_bound_mib",
    } <= tags
    assert guard.summary.peak_gpu[0] == GIB


def test_gpu_bound_in_bytes_not_crossed(fake_nvml):
    guard = MemGuardCallback(max_gpu_memory="2GiB", verbose=0)
    history = fit(tiny_model(), [guard], epochs=2)
    assert len(history.history["loss"]) == 2 and guard.summary.halts == []


def test_custom_scalars_layout_has_a_chart_per_gpu(fake_nvml, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    fit(tiny_model(), [MemGuardCallback(log_dir=tmp_path, verbose=0)], epochs=1)
    acc = EventAccumulator(str(tmp_path / "memory"), size_guidance={"tensors": 0})
    acc.Reload()
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0])
    titles = [chart.title for chart in layout.category[0].chart]
    assert "GPU 0 memory against its bound (MiB)" in titles
    assert "GPU 1 memory against its bound (MiB)" in titles
