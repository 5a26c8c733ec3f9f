"""The JAX and PyTorch backends on a real NVIDIA GPU (skipped without one).

Each case runs one check of ``tests/gpu_checks.py`` in a fresh process with
``KERAS_BACKEND`` set, because a framework fixes its GPU pool or CUDA context at its
first touch of the device. ``tests/gpu/run.sh`` runs these on the lent GPU machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from keras_memguard.probes import nvml

GIB = 2**30
MIB = 2**20
CHECKS = os.path.join(os.path.dirname(__file__), "gpu_checks.py")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not nvml.visible_devices(), reason="needs an NVIDIA GPU and NVML"),
]
BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            importlib.util.find_spec(module) is None, reason=f"{module} is not installed"
        ),
    )
    for name, module in (("jax", "jax"), ("torch", "torch"))
]


def run_check(name: str, backend: str, timeout: float = 300) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend)
    out = subprocess.run(
        [sys.executable, CHECKS, name], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(backend, name, json.dumps(result))  # shown with -s / in the run log
    return result


@pytest.mark.parametrize("backend", BACKENDS)
def test_doctor_agrees_with_nvidia_smi(backend):
    r = run_check("doctor", backend)
    assert abs(r["doctor_total"] - r["smi_total"]) <= MIB  # nvidia-smi rounds to MiB
    # Both read while this process holds 2 GiB; other processes may move a little.
    assert abs(r["doctor_used"] - r["smi_used"]) <= 256 * MIB
    assert r["doctor_used"] >= r["held"]
    pid = str(r["pid"])
    if r["smi_apps"]:
        # nvidia-smi lists processes: ours must be there, with the figure doctor shows.
        assert pid in r["smi_apps"], r["smi_apps"]
        assert r["doctor_process"] is not None
        assert abs(r["doctor_process"] - r["smi_apps"][pid]) <= MIB
        assert r["doctor_process"] >= r["held"]
    else:
        # A PID namespace hides processes from the driver: NVML and nvidia-smi agree on that.
        assert r["doctor_process"] is None
    assert r["tensorflow_imported"] is False


def test_jax_preallocates_most_of_the_gpu_by_default():
    pytest.importorskip("jax")
    r = run_check("default_preallocation", "jax")
    used = r["process"] if r["process"] is not None else r["smi_used"]
    assert used >= 0.5 * r["total"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_growth_keeps_the_process_small(backend):
    r = run_check("growth", backend)
    # This process's figure where the driver shows it; else the whole device's (a PID
    # namespace hides processes), which on a lent machine is this process's too.
    used = r["process"] if r["process"] is not None else r["smi_used"]
    assert used < 4 * GIB, r


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_limit_lets_6gib_through_and_stops_10gib(backend):
    r = run_check("limit", backend)
    assert r["six_ok"] is True, r
    assert r["ten_ok"] is False, r
    assert r["recognised"] is True, r  # the backend adapter calls it an OOM


@pytest.mark.parametrize("backend", BACKENDS)
def test_device_figures_match_known_allocations(backend):
    r = run_check("figures", backend)
    base, one, temp = r["base"], r["after_one"], r["after_temp"]
    grown = one["gpu0_allocated_mib"] - base["gpu0_allocated_mib"]
    assert abs(grown - 1024) <= 0.05 * 1024, r
    # The 2 GiB temporary was freed; the peak saw it on top of the 1 GiB held.
    assert temp["gpu0_allocated_peak_mib"] >= base["gpu0_allocated_mib"] + 0.95 * 3072, r
    assert abs(temp["gpu0_allocated_mib"] - one["gpu0_allocated_mib"]) <= 0.05 * 1024, r


@pytest.mark.parametrize("backend", BACKENDS)
def test_guard_halts_a_device_leak_with_a_loadable_checkpoint(backend):
    r = run_check("guard_halt", backend)
    assert r["halts"], r
    assert r["checkpoint_loads"] is True
    # Checked every batch: at most one 256 MiB step past the 4 GiB bound (plus model state).
    assert r["batches_kept"] <= 4 * 1024 // 256 + 2, r
    assert r["halt_value"] <= r["halt_bound"] + 2 * 256 * MIB, r


@pytest.mark.parametrize("backend", BACKENDS)
def test_find_batch_size_backs_off_on_a_real_device_oom(backend):
    r = run_check("find_batch_size", backend, timeout=600)
    outcomes = [a[1] for a in r["attempts"]]
    assert outcomes[0] == "out of memory", r
    assert outcomes[-1] == "ok", r
    assert r["batch_size"] <= 1024, r


def test_release_memory_returns_pytorch_cache_to_the_device():
    pytest.importorskip("torch")
    r = run_check("release", "torch")
    before = r["smi_before"] if r["smi_before"] is not None else r["nvml_before"]
    after = r["smi_after"] if r["smi_after"] is not None else r["nvml_after"]
    assert before is not None and after is not None, r
    assert before - after >= 3.5 * GIB, r
