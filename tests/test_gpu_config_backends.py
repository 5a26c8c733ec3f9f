"""configure_gpus under JAX and PyTorch: the environment JAX reads, torch's memory
fraction, the errors after initialisation, and the real frameworks on this CPU machine.

Faked at the boundary only: NVML (the GPUs' totals), JAX's table of created backends,
and the ``torch.cuda`` calls behind ``TorchDevices``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import GIB

from keras_memguard import GpuConfigError, configure_gpus

pytestmark = pytest.mark.backends
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_VARIABLES = (
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
    "CUDA_VISIBLE_DEVICES",
    "PYTORCH_ALLOC_CONF",
    "PYTORCH_CUDA_ALLOC_CONF",
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in JAX_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def jax_not_started(monkeypatch):
    """JAX's backend table as before its first operation (empty), if JAX is loaded."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None:
        monkeypatch.setattr(bridge, "_backends", {})
    return bridge


# --- JAX ---------------------------------------------------------------------------


def test_jax_limit_in_bytes_becomes_one_fraction(fake_nvml, clean_env, jax_not_started):
    report = configure_gpus(memory_limit="8GiB", memory_growth=True, backend="jax")
    fraction = os.environ.get("XLA_CLIENT_MEM_FRACTION") or os.environ.get(
        "XLA_PYTHON_CLIENT_MEM_FRACTION"
    )
    assert fraction == "0.5"  # 8 GiB of each 16 GiB GPU
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert report.backend == "jax" and report.changed
    assert [g.memory_limit for g in report.gpus] == [8 * GIB, 8 * GIB]
    assert "grows on demand" in str(report)
    assert "XLA_PYTHON_CLIENT_PREALLOCATE=false" in str(report)


def test_jax_keeps_the_fraction_variable_the_user_set(
    fake_nvml, clean_env, jax_not_started, monkeypatch
):
    # JAX refuses XLA_CLIENT_MEM_FRACTION beside XLA_PYTHON_CLIENT_MEM_FRACTION.
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    configure_gpus(memory_limit="25%", backend="jax")
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.25"
    assert "XLA_CLIENT_MEM_FRACTION" not in os.environ


def test_jax_has_one_fraction_for_all_gpus(fake_nvml, clean_env, jax_not_started):
    with pytest.raises(ValueError, match=r"memory_limit.*JAX"):
        configure_gpus(memory_limit={0: "8GiB", 1: "4GiB"}, backend="jax")
    with pytest.raises(ValueError, match=r"memory_limit.*JAX"):
        configure_gpus(memory_limit={0: "8GiB"}, backend="jax")
    assert configure_gpus(memory_limit={0: 0.5, 1: "8GiB"}, backend="jax").changed
    with pytest.raises(ValueError, match="logical_devices_per_gpu"):
        configure_gpus(memory_limit="1GiB", logical_devices_per_gpu=2, backend="jax")
    assert not any(os.environ.get(v) for v in ("XLA_PYTHON_CLIENT_PREALLOCATE",))


def test_jax_allocator_and_visible_gpus(fake_nvml, clean_env, jax_not_started):
    report = configure_gpus(allocator="cuda_malloc_async", visible_gpus=[1], backend="jax")
    assert os.environ["XLA_PYTHON_CLIENT_ALLOCATOR"] == "cuda_async"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert report.hidden == (0,)
    with pytest.raises(ValueError, match="allocator"):
        configure_gpus(allocator="cuda_malloc", backend="jax")


def test_jax_after_its_gpu_backend_exists(fake_nvml, clean_env, monkeypatch):
    bridge = pytest.importorskip("jax._src.xla_bridge")
    monkeypatch.setattr(bridge, "_backends", {})
    configure_gpus(memory_growth=True, backend="jax")
    monkeypatch.setattr(bridge, "_backends", {"cuda": object()})
    # The same setting again is a no-op; a different one is a clear error.
    again = configure_gpus(memory_growth=True, backend="jax")
    assert not again.changed and again.initialized
    with pytest.raises(GpuConfigError, match=r"JAX has already initialized.*PREALLOCATE"):
        configure_gpus(memory_growth=False, backend="jax")
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_jax_on_a_cpu_machine_configures_nothing(no_nvml, clean_env, jax_not_started):
    from keras_memguard.backends.jax import configure

    if configure.has_gpu_plugin():
        pytest.skip("a JAX GPU plugin is installed here")
    report = configure_gpus(memory_limit="4GiB", memory_growth=True, backend="jax")
    assert not report.changed and "nothing to configure" in report.message
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ


# --- PyTorch -----------------------------------------------------------------------


class FakeTorchDevices:
    """Behaves like torch.cuda: the fraction applies at any time."""

    def __init__(self, count=2, total=16 * GIB):
        self.count = count
        self.totals = [total] * count
        self.fractions = [1.0] * count
        self.initialized = False
        self.calls = []

    def is_initialized(self):
        return self.initialized

    def device_count(self):
        return self.count

    def gpu_name(self, index):
        return "Fake H100"

    def total(self, index):
        self.initialized = True  # as torch: asking creates the CUDA context
        return self.totals[index]

    def get_fraction(self, index):
        return self.fractions[index]

    def set_fraction(self, fraction, index):
        self.calls.append((round(fraction, 6), index))
        self.fractions[index] = fraction


def test_torch_limit_becomes_each_gpus_memory_fraction(clean_env):
    devices = FakeTorchDevices()
    report = configure_gpus(memory_limit="4GiB", backend="torch", devices=devices)
    assert devices.calls == [(0.25, 0), (0.25, 1)]
    assert [g.memory_limit for g in report.gpus] == [4 * GIB, 4 * GIB]
    assert report.backend == "torch" and report.changed
    again = configure_gpus(memory_limit="4GiB", backend="torch", devices=devices)
    assert not again.changed and devices.calls == [(0.25, 0), (0.25, 1)]
    # Unlike TensorFlow and JAX, torch takes a new fraction after initialisation.
    configure_gpus(memory_limit={1: 0.5}, backend="torch", devices=devices)
    assert devices.calls[-1] == (0.5, 1)


def test_torch_allocator_before_cuda_and_refused_after(clean_env, monkeypatch):
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    devices = FakeTorchDevices()
    report = configure_gpus(allocator="cuda_malloc_async", backend="torch", devices=devices)
    assert os.environ["PYTORCH_ALLOC_CONF"] == "expandable_segments:True,backend:cudaMallocAsync"
    assert "PYTORCH_ALLOC_CONF" in str(report)
    devices.initialized = True
    with pytest.raises(GpuConfigError, match="PyTorch has already initialized"):
        configure_gpus(allocator="native", backend="torch", devices=devices)


def test_torch_memory_growth_false_is_refused(clean_env):
    with pytest.raises(ValueError, match=r"memory_growth.*grows on demand"):
        configure_gpus(memory_growth=False, backend="torch", devices=FakeTorchDevices())
    report = configure_gpus(memory_growth=True, backend="torch", devices=FakeTorchDevices())
    assert not report.changed


def test_torch_without_gpus(clean_env):
    report = configure_gpus(memory_limit="4GiB", backend="torch", devices=FakeTorchDevices(count=0))
    assert not report.changed and "sees no GPU" in report.message


# --- The real frameworks on this CPU machine -----------------------------------------


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_configure_gpus_with_the_real_framework_on_this_cpu_machine(backend):
    code = f"""
        import sys
        import keras_memguard as mg
        report = mg.configure_gpus(memory_growth=True)
        assert report.backend == {backend!r}, report
        assert not report.changed, report
        assert "tensorflow" not in sys.modules
        import keras, numpy as np
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(np.zeros((8, 4)), np.zeros((8, 1)), epochs=1, verbose=0)
        assert "tensorflow" not in sys.modules
        print(report.message)
        """
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if f"No module named '{backend}'" in result.stderr:
        pytest.skip(f"{backend} is not installed in this environment")
    assert result.returncode == 0, result.stderr
    assert "nothing to configure" in result.stdout


def test_torch_visible_gpus_before_cuda_initialises(clean_env, monkeypatch):
    devices = FakeTorchDevices()
    report = configure_gpus(memory_limit="8GiB", visible_gpus=[1], backend="torch", devices=devices)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert report.hidden == (0,)
    # Torch will number the one visible GPU 0; its limit is set there.
    assert devices.calls == [(0.5, 0)]
    # Indices count the GPUs visible now: GPU 0 of "1" is the same GPU, nothing changes.
    assert not configure_gpus(visible_gpus=[0], backend="torch", devices=devices).changed
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(GpuConfigError, match="CUDA_VISIBLE_DEVICES"):
        configure_gpus(visible_gpus=[0], backend="torch", devices=devices)
