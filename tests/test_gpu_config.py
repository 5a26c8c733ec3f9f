"""configure_gpus: planning against fake NVML, TensorFlow calls through a fake adapter,
and the real TensorFlow path on this CPU-only machine."""

import logging
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
from conftest import GIB

from keras_memguard import GpuConfigError, configure_gpus
from keras_memguard.backends.configure import current_gpu_configuration

MIB = 2**20


@dataclass(frozen=True)
class Device:
    name: str
    device_type: str = "GPU"


class FakeDevices:
    """Behaves like tf.config: settings are refused once the runtime is initialized."""

    def __init__(self, count=2):
        self.gpus = [Device(f"/physical_device:GPU:{i}") for i in range(count)]
        self.initialized = False
        self.growth = {d.name: False for d in self.gpus}
        self.limits = {}
        self.visible = list(self.gpus)
        self.calls = []

    def _refuse_if_initialized(self):
        if self.initialized:
            raise RuntimeError("Physical devices cannot be modified after being initialized")

    def is_initialized(self):
        return self.initialized

    def physical_gpus(self):
        return list(self.gpus)

    def get_visible_gpus(self):
        return list(self.visible)

    def set_visible_gpus(self, devices):
        self._refuse_if_initialized()
        self.calls.append(("visible", [d.name for d in devices]))
        self.visible = list(devices)

    def get_memory_growth(self, device):
        return self.growth[device.name]

    def set_memory_growth(self, device, enable):
        self._refuse_if_initialized()
        if any(
            g != enable for n, g in self.growth.items() if n != device.name and self.initialized
        ):
            raise ValueError("Memory growth cannot differ between GPU devices")
        self.calls.append(("growth", device.name, enable))
        self.growth[device.name] = enable

    def get_memory_limits(self, device):
        return self.limits.get(device.name)

    def set_memory_limits(self, device, limits_mib):
        self._refuse_if_initialized()
        self.calls.append(("limits", device.name, list(limits_mib)))
        self.limits[device.name] = list(limits_mib)

    def gpu_name(self, device):
        return "Fake A100"


@pytest.fixture
def devices():
    return FakeDevices()


def test_byte_limit_on_every_gpu(devices, fake_nvml):
    report = configure_gpus(memory_limit="6GiB", devices=devices)
    assert devices.calls == [
        ("limits", "/physical_device:GPU:0", [6144]),
        ("limits", "/physical_device:GPU:1", [6144]),
    ]
    assert report.changed and not report.initialized
    assert [g.memory_limit for g in report.gpus] == [6 * GIB, 6 * GIB]
    assert [g.total for g in report.gpus] == [16 * GIB, 16 * GIB]
    table = str(report)
    assert "limit 6.0 GiB" in table and "16.0 GiB" in table and "Fake A100" in table


def test_fraction_uses_nvml_totals(devices, fake_nvml):
    configure_gpus(memory_limit="50%", devices=devices)
    assert devices.limits == {"/physical_device:GPU:0": [8192], "/physical_device:GPU:1": [8192]}


def test_mapping_configures_only_the_named_gpus(devices, fake_nvml):
    report = configure_gpus(memory_limit={0: "4GiB", 1: 0.25}, devices=devices)
    assert devices.limits == {"/physical_device:GPU:0": [4096], "/physical_device:GPU:1": [4096]}
    partial = FakeDevices()
    report = configure_gpus(memory_limit={1: "2GiB"}, devices=partial)
    assert partial.limits == {"/physical_device:GPU:1": [2048]}
    assert report.gpus[0].memory_limit is None


def test_memory_growth_on_every_gpu(devices, no_nvml):
    report = configure_gpus(memory_growth=True, devices=devices)
    assert devices.growth == {"/physical_device:GPU:0": True, "/physical_device:GPU:1": True}
    assert all(g.memory_growth for g in report.gpus)
    assert "memory growth" in str(report)


def test_several_logical_gpus_per_physical(devices, fake_nvml):
    configure_gpus(memory_limit="2GiB", logical_devices_per_gpu=3, devices=devices)
    assert devices.limits["/physical_device:GPU:0"] == [2048, 2048, 2048]


def test_visible_gpus(devices, fake_nvml):
    report = configure_gpus(memory_growth=True, visible_gpus=[1], devices=devices)
    assert ("visible", ["/physical_device:GPU:1"]) in devices.calls
    assert report.hidden == (0,)


def test_same_configuration_twice_is_a_no_op(devices, fake_nvml):
    assert configure_gpus(memory_limit="6GiB", devices=devices).changed
    count = len(devices.calls)
    assert not configure_gpus(memory_limit="6GiB", devices=devices).changed
    assert len(devices.calls) == count
    devices.initialized = True
    again = configure_gpus(memory_limit="6GiB", devices=devices)
    assert not again.changed and again.initialized


def test_different_configuration_after_initialization_is_a_clear_error(devices, fake_nvml):
    configure_gpus(memory_limit="6GiB", devices=devices)
    devices.initialized = True
    with pytest.raises(GpuConfigError) as info:
        configure_gpus(memory_limit="8GiB", devices=devices)
    message = str(info.value)
    assert "already initialized" in message
    assert "GPU 0: limit 6.0 GiB" in message  # what was applied
    assert "before building models or running any TensorFlow op" in message
    with pytest.raises(GpuConfigError):
        configure_gpus(memory_growth=True, devices=_initialized_default())


def _initialized_default():
    devices = FakeDevices()
    devices.initialized = True
    return devices


def test_allocator_is_set_before_initialization_and_refused_after(devices, no_nvml, monkeypatch):
    monkeypatch.delenv("TF_GPU_ALLOCATOR", raising=False)
    report = configure_gpus(memory_growth=True, allocator="cuda_malloc_async", devices=devices)
    assert os.environ["TF_GPU_ALLOCATOR"] == "cuda_malloc_async"
    assert report.allocator == "cuda_malloc_async"
    monkeypatch.delenv("TF_GPU_ALLOCATOR")
    with pytest.raises(GpuConfigError, match="TF_GPU_ALLOCATOR"):
        configure_gpus(allocator="cuda_malloc_async", devices=_initialized_default())


def test_no_gpu_reports_and_logs_at_info(caplog, no_nvml):
    with caplog.at_level(logging.INFO, logger="keras_memguard"):
        report = configure_gpus(memory_limit="4GiB", devices=FakeDevices(count=0))
    assert report.gpus == () and not report.changed
    assert "sees no GPU" in str(report)
    assert any("sees no GPU" in r.message and r.levelno == logging.INFO for r in caplog.records)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"memory_limit": -1}, "memory_limit"),
        ({"memory_limit": 0}, "memory_limit"),
        ({"memory_limit": 1.5}, "memory_limit"),
        ({"memory_limit": "150%"}, "memory_limit"),
        ({"memory_limit": "5 GiBs"}, "memory_limit"),
        ({"memory_limit": {5: "1GiB"}}, "memory_limit"),
        ({"memory_limit": {"0": "1GiB"}}, "memory_limit"),
        ({"memory_limit": {0: "-3GB"}}, "memory_limit[0]"),
        ({"memory_limit": "40GiB"}, "memory_limit"),  # more than the 16 GiB GPU
        ({"memory_limit": "1GiB", "memory_growth": True}, "memory_growth"),
        ({"memory_growth": "yes"}, "memory_growth"),
        ({"visible_gpus": [3]}, "visible_gpus"),
        ({"visible_gpus": "0"}, "visible_gpus"),
        ({"logical_devices_per_gpu": 0}, "logical_devices_per_gpu"),
        ({"logical_devices_per_gpu": 2}, "logical_devices_per_gpu"),
        ({"allocator": "bfc"}, "allocator"),
    ],
)
def test_bad_input_names_the_parameter_and_echoes_the_value(devices, fake_nvml, kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"`{name}`")) as info:
        configure_gpus(devices=devices, **kwargs)
    assert "Received:" in str(info.value)
    assert devices.calls == []  # nothing was half-applied


def test_fraction_without_nvml_names_the_extra(devices, no_nvml):
    with pytest.raises(ValueError, match=r"pip install 'keras-memguard\[gpu\]'"):
        configure_gpus(memory_limit=0.5, devices=devices)


def test_current_configuration_for_doctor(devices, fake_nvml, monkeypatch):
    configure_gpus(memory_limit="6GiB", devices=devices)
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow", object()))
    state = current_gpu_configuration(devices)
    assert state["initialized"] is False
    assert [g["setting"] for g in state["gpus"]] == ["limit 6.0 GiB x1", "limit 6.0 GiB x1"]


def test_real_tensorflow_on_this_cpu_machine():
    code = textwrap.dedent(
        """
        import keras_memguard as mg
        from keras_memguard.backends.tensorflow import memory as tf_devices
        report = mg.configure_gpus(memory_growth=True)
        assert report.gpus == () and not report.initialized, report
        assert not tf_devices.is_initialized()
        import tensorflow as tf
        tf.constant(1.0)
        after = mg.configure_gpus(memory_limit="1GiB")
        assert after.initialized and after.gpus == (), after
        from keras_memguard.backends.configure import current_gpu_configuration
        state = current_gpu_configuration()
        assert state["initialized"] is True and state["gpus"] == []
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_import_does_not_configure_or_initialize_anything():
    code = (
        "import sys, keras_memguard; "
        "assert 'tensorflow' not in sys.modules, 'import pulled in TensorFlow'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
