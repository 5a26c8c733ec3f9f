"""The NVML boundary against a fake pynvml module."""

import sys
import time
import warnings

import pytest
from conftest import GIB
from fake_nvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_UNKNOWN,
    FakeGpu,
    FakeNvml,
)

from keras_memguard import memory_snapshot as snapshot_module
from keras_memguard import snapshot
from keras_memguard.backends.base import DeviceMemory
from keras_memguard.errors import MemGuardWarning
from keras_memguard.probes import nvml


def test_devices_and_memory(fake_nvml):
    devices = nvml.visible_devices()
    assert [(d.index, d.nvml_index, d.name, d.total) for d in devices] == [
        (0, 0, "Fake A100", 16 * GIB),
        (1, 1, "Fake A100", 16 * GIB),
    ]
    gpus = nvml.read_gpu_memory()
    assert gpus[0].used == 3 * GIB
    assert gpus[0].free == 13 * GIB
    assert gpus[0].process_used == GIB  # only this pid's entry, not pid 99999's
    assert gpus[1].process_used is None  # this process has not touched GPU 1
    assert nvml.driver_version() == "550.54.15"
    assert fake_nvml.init_calls == 1  # initialized once, not per read


@pytest.mark.parametrize(
    "visible, expected",
    [
        ("1", [(0, 1)]),
        ("1,0", [(0, 1), (1, 0)]),
        ("GPU-bbbb", [(0, 1)]),
        ("0,7,1", [(0, 0)]),
        ("", []),
        ("-1", []),
        ("0,0", [(0, 0)]),
    ],
)
def test_cuda_visible_devices_remaps_indices(fake_nvml, monkeypatch, visible, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    nvml.reset()
    assert [(g.index, g.nvml_index) for g in nvml.read_gpu_memory()] == expected


def test_visible_device_figures_follow_the_remapping(fake_nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    nvml.reset()
    gpus = nvml.read_gpu_memory()
    assert gpus[1].used == 3 * GIB and gpus[1].process_used == GIB
    assert gpus[0].used == 0


def test_mig_uuid_warns_once_and_leaves_gpus_out(fake_nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1234")
    nvml.reset()
    with pytest.warns(MemGuardWarning, match="MIG"):
        assert nvml.read_gpu_memory() == []


@pytest.mark.parametrize("code", [NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED])
def test_no_driver_is_silent(fake_nvml, code):
    fake_nvml.init_error = code
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nvml.read_gpu_memory() is None
        assert nvml.visible_devices() is None
        assert not nvml.is_available()


def test_module_missing_is_silent(no_nvml):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nvml.read_gpu_memory() is None
        assert snapshot().gpus == ()


def test_other_init_failure_warns_once(fake_nvml):
    fake_nvml.init_error = NVML_ERROR_UNKNOWN
    with pytest.warns(MemGuardWarning, match="cannot initialize NVML"):
        assert nvml.read_gpu_memory() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nvml.read_gpu_memory() is None


def test_error_mid_call_returns_none_and_warns_once(fake_nvml, monkeypatch):
    monkeypatch.setattr(nvml, "RETRY_FIRST_S", 0.0)  # no back-off between reads here
    nvml.reset()
    assert nvml.read_gpu_memory() is not None
    fake_nvml.memory_reads_left = 1  # GPU 0 reads, GPU 1 is lost mid-call
    with pytest.warns(MemGuardWarning, match="cannot read GPU memory"):
        assert nvml.read_gpu_memory() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nvml.read_gpu_memory() is None
    fake_nvml.memory_reads_left = None
    assert len(nvml.read_gpu_memory()) == 2  # recovers when NVML does


def test_snapshot_carries_gpu_metrics(fake_nvml):
    snap = snapshot()
    assert [g.index for g in snap.gpus] == [0, 1]
    metrics = snap.metrics()
    assert metrics["gpu0_device_used_mib"] == 3 * 1024
    assert metrics["gpu0_device_total_mib"] == 16 * 1024
    assert metrics["gpu0_process_mib"] == 1024
    assert "gpu1_process_mib" not in metrics
    assert snap.gpus[0].guarded == ("process", GIB)  # this process's share, not the device's
    assert snap.gpus[1].guarded == ("device_used", 0)


def test_device_used_leaves_out_the_driver_reserve_as_nvidia_smi_does(fake_nvml):
    # Seen on an H200 (driver 580): an idle GPU read 615 MiB "used" through NVML's first
    # memory call while nvidia-smi said 0 MiB; the difference is the driver's reserve.
    fake_nvml.gpus[1].reserved = 615 * 2**20
    nvml.reset()
    metrics = snapshot().metrics()
    assert metrics["gpu1_device_used_mib"] == 0
    assert metrics["gpu1_device_total_mib"] == 16 * 1024


def test_parse_visible_devices_examples():
    uuids = ["GPU-a1", "GPU-b2", "GPU-c3"]
    assert nvml.parse_visible_devices(None, uuids) is None
    assert nvml.parse_visible_devices("2,0", uuids) == [2, 0]
    assert nvml.parse_visible_devices("GPU-c", uuids) == [2]
    assert nvml.parse_visible_devices("GPU-", uuids) == []  # ambiguous prefix stops parsing


@pytest.fixture
def mixed_nvml(monkeypatch):
    """A mixed machine: NVML (PCI order) lists a slow GPU before a fast one."""
    fake = FakeNvml(
        [
            FakeGpu("Fake T4", "GPU-slow-0000", 16 * GIB, used=GIB),
            FakeGpu("Fake H100", "GPU-fast-1111", 80 * GIB, used=8 * GIB),
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    nvml.reset()
    yield fake
    nvml.reset()


def test_mixed_machine_without_device_order_warns_that_figures_may_be_misplaced(mixed_nvml):
    from keras_memguard.cli.doctor import doctor_report

    assert not nvml.order_is_certain()
    with pytest.warns(MemGuardWarning, match="CUDA_DEVICE_ORDER=PCI_BUS_ID"):
        snapshot()
    advice = "\n".join(doctor_report()["warnings"])
    assert "mixes GPU models" in advice and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in advice


@pytest.mark.parametrize(
    "env",
    [
        {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        {"CUDA_VISIBLE_DEVICES": "GPU-fast,GPU-slow"},
    ],
)
def test_mixed_machine_order_is_certain_with_bus_order_or_uuids(mixed_nvml, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    nvml.reset()
    assert nvml.order_is_certain()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpus = snapshot().gpus
    expected = ["Fake T4", "Fake H100"] if "CUDA_DEVICE_ORDER" in env else ["Fake H100", "Fake T4"]
    assert [g.name for g in gpus] == expected


class _FakeAllocator:
    """The framework adapter at its one boundary: figures with the devices' UUIDs."""

    name = "fake"

    def __init__(self, figures):
        self.figures = figures

    def device_memory(self):
        return self.figures

    def reset_peaks(self):
        return False


def test_framework_uuids_place_allocator_figures_on_the_right_gpu(mixed_nvml, monkeypatch):
    # CUDA's fastest-first order: /GPU:0 is the H100, which NVML lists second.
    fast = DeviceMemory(index=0, allocated=5 * GIB, peak=7 * GIB, uuid="GPU-fast-1111")
    slow = DeviceMemory(index=1, allocated=GIB // 2, peak=GIB, uuid="GPU-slow-0000")
    monkeypatch.setattr(snapshot_module, "current_backend", lambda: _FakeAllocator([fast, slow]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # UUIDs settle the order: no warning
        gpus = snapshot().gpus
    assert [(g.index, g.name, g.total, g.allocated_peak) for g in gpus] == [
        (0, "Fake H100", 80 * GIB, 7 * GIB),
        (1, "Fake T4", 16 * GIB, GIB),
    ]


def test_transient_init_failure_is_retried_after_a_back_off(fake_nvml, monkeypatch):
    fake_nvml.init_error = NVML_ERROR_UNKNOWN
    with pytest.warns(MemGuardWarning, match="tries again later"):
        assert nvml.read_gpu_memory() is None
    fake_nvml.init_error = None
    assert nvml.read_gpu_memory() is None  # within the back-off: not tried yet
    assert fake_nvml.init_calls == 1
    monkeypatch.setattr(nvml._state, "retry_at", 0.0)  # the back-off has passed
    assert [g.index for g in nvml.read_gpu_memory()] == [0, 1]
    assert fake_nvml.init_calls == 2


def test_read_failures_back_off_and_then_recover(fake_nvml, monkeypatch):
    monkeypatch.setattr(nvml, "RETRY_FIRST_S", 0.05)
    nvml.reset()
    assert nvml.read_gpu_memory() is not None
    fake_nvml.memory_reads_left = 0
    with pytest.warns(MemGuardWarning, match="until a later read succeeds"):
        assert nvml.read_gpu_memory() is None
    fake_nvml.memory_reads_left = None
    assert nvml.read_gpu_memory() is None  # backing off: NVML is not asked
    time.sleep(0.06)
    assert len(nvml.read_gpu_memory()) == 2
