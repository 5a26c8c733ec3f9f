"""snapshot(), its flat metrics, and `memguard doctor` through the console script."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import GIB

from keras_memguard import MemorySnapshot, snapshot
from keras_memguard.cli.doctor import diagnose, doctor_report, format_doctor

MIB = 2**20


def memguard_command():
    script = shutil.which("memguard", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "keras_memguard"]


def test_snapshot_fields_and_metrics():
    snap = snapshot()
    assert snap.process_rss > 0 and snap.process_tree >= snap.process_rss
    assert snap.effective_limit <= snap.system_total
    assert 0 < snap.effective_available <= snap.effective_limit
    metrics = snap.metrics()
    assert metrics["process_rss_mib"] == pytest.approx(snap.process_rss / MIB, abs=0.01)
    assert metrics["effective_limit_mib"] == pytest.approx(snap.effective_limit / MIB, abs=0.01)
    assert all(isinstance(v, float) for v in metrics.values())
    host = {
        "process_rss_mib",
        "process_tree_mib",
        "process_children_mib",
        "process_children_age_s",
        "process_rss_peak_mib",
        "system_available_mib",
        "system_used_percent",
        "swap_used_mib",
        "effective_limit_mib",
        "effective_available_mib",
    }
    assert host <= set(metrics)
    # A figure that does not apply is left out rather than logged as 0 or NaN.
    assert ("container_limit_mib" in metrics) == (snap.container_limit is not None)
    assert not [k for k in metrics if k.startswith("gpu")]  # no GPU figures here
    tree = metrics["process_rss_mib"] + metrics["process_children_mib"]
    assert metrics["process_tree_mib"] == pytest.approx(tree, abs=0.01)


def test_effective_limit_and_available_take_the_container_into_account():
    snap = MemorySnapshot(
        timestamp=0.0,
        system_total=64 * GIB,
        system_available=60 * GIB,
        container_limit=8 * GIB,
        container_working_set=6 * GIB,
    )
    assert snap.effective_limit == 8 * GIB
    assert snap.effective_available == 2 * GIB
    assert "container_limit_mib" in snap.metrics()
    bare = MemorySnapshot(timestamp=0.0)
    assert bare.effective_limit is None and bare.metrics() == {}


@pytest.mark.tensorflow
def test_snapshot_does_not_initialize_tensorflow_devices():
    code = textwrap.dedent(
        """
        import tensorflow as tf
        import keras_memguard
        from keras_memguard.backends.tensorflow import memory as tf_devices
        from keras_memguard.cli.doctor import doctor_report
        keras_memguard.snapshot()
        doctor_report()
        assert not tf_devices.is_initialized(), "snapshot initialized TensorFlow"
        # Proof from TensorFlow itself: devices can still be configured.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        tf.constant(1.0)
        assert tf_devices.is_initialized()
        assert len(tf.config.list_logical_devices("CPU")) == 2
        assert keras_memguard.snapshot().process_rss > 0
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.tensorflow
def test_doctor_console_script_text():
    out = subprocess.run(
        [*memguard_command(), "doctor"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for heading in ("Versions", "Process", "Host", "Effective"):
        assert f"\n{heading}\n" in out.stdout
    assert "tensorflow" in out.stdout and "keras" in out.stdout
    assert "\nGPUs\n" in out.stdout  # always: the GPUs, or why none are shown
    assert "Warning" not in out.stderr  # and no noise


@pytest.mark.tensorflow
def test_doctor_console_script_json():
    env = {**os.environ, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    out = subprocess.run(
        [*memguard_command(), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["versions"]["tensorflow"]
    assert report["snapshot"]["process_rss"] > 0
    assert report["effective_limit"] <= report["snapshot"]["system_total"]
    assert report["environment"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert report["tensorflow_initialized"] is False
    assert isinstance(report["warnings"], list)


def test_doctor_unknown_command_exits_non_zero():
    out = subprocess.run(
        [*memguard_command(), "nonsense"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_diagnose_container_far_below_host():
    snap = MemorySnapshot(
        timestamp=0.0,
        system_total=64 * GIB,
        system_available=60 * GIB,
        container_limit=8 * GIB,
        container_working_set=GIB,
        container_oom_kills=2,
        swap_used=GIB,
    )
    advice = "\n".join(diagnose(snap, {}, {}))
    assert "autotune" in advice and "8.0 GiB" in advice and "64.0 GiB" in advice
    assert "OOM killer has already killed 2" in advice
    assert "swap" in advice


def test_diagnose_unreadable_cgroup_says_what_the_bound_now_means(tmp_path, monkeypatch):
    from keras_memguard.probes import cgroup

    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text(str(4 * GIB))
    (root / "memory" / "memory.usage_in_bytes").mkdir()  # unreadable as a file
    (tmp_path / "proc_cgroup").write_text("5:memory:/\n")
    reader = cgroup.CgroupReader(str(root), str(tmp_path / "proc_cgroup"))
    monkeypatch.setattr(cgroup, "_default_reader", reader)
    with pytest.warns(Warning, match="memory.usage_in_bytes"):
        report = doctor_report()
    advice = "\n".join(report["warnings"])
    assert "memory.usage_in_bytes" in advice and "80% of host RAM" in advice
    assert "in bytes" in advice


def test_diagnose_nearly_out_of_memory():
    snap = MemorySnapshot(timestamp=0.0, system_total=16 * GIB, system_available=GIB)
    assert any("Only 1.0 GiB of 16.0 GiB" in a for a in diagnose(snap, {}, {}))


def test_doctor_reports_gpus_and_other_processes(fake_nvml):
    fake_nvml.gpus[1].used = 12 * GIB  # someone else holds 12 of GPU 1's 16 GiB
    report = doctor_report()
    assert [g["index"] for g in report["snapshot"]["gpus"]] == [0, 1]
    assert report["versions"]["nvidia_driver"] == "550.54.15"
    assert any("Other processes hold 12.0 GiB of GPU 1" in w for w in report["warnings"])
    text = format_doctor(report)
    assert "GPUs" in text and "GPU 0 Fake A100" in text


def test_doctor_without_nvml_says_what_to_install(no_nvml):
    report = doctor_report()
    assert not report["snapshot"]["gpus"]
    text = format_doctor(report)
    assert "\nGPUs\n" in text
    assert "nvidia-ml-py is not installed" in text and "keras-memguard[gpu]" in text


def test_doctor_with_nvml_but_no_driver_says_so(monkeypatch):
    from fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNvml

    from keras_memguard.probes import nvml

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    nvml.reset()
    try:
        text = format_doctor(doctor_report())
    finally:
        nvml.reset()
    assert "\nGPUs\n" in text and "cannot load the NVIDIA driver" in text
