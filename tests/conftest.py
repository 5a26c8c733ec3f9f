"""Shared fixtures: a fake NVML module stood in at the boundary, and clean warning state."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fake_nvml import FakeGpu, FakeNvml

from keras_memguard.backends.base import backend_name
from keras_memguard.errors import reset_warnings
from keras_memguard.probes import nvml

GIB = 2**30

# Modules whose tests run on every Keras backend (`pytest -m backends` under JAX and
# PyTorch, in environments without TensorFlow); a test in them that needs TensorFlow
# carries @pytest.mark.tensorflow. Other modules mark themselves with pytestmark.
BACKEND_MODULES = {
    "test_sizes.py",
    "test_process_and_system_memory.py",
    "test_container_memory.py",
    "test_nvml.py",
    "test_snapshot_and_doctor.py",
    "test_report.py",
    "test_callback.py",
    "test_callback_faults.py",
    "test_isolation.py",
    "test_public_api.py",
}


# Modules that import TensorFlow at their top: not even collected where it is missing.
collect_ignore = ["test_pipeline.py"] if importlib.util.find_spec("tensorflow") is None else []


def pytest_collection_modifyitems(config, items):
    skip_tf = pytest.mark.skip(reason=f"needs the TensorFlow backend (this is {backend_name()})")
    for item in items:
        needs_tf = item.get_closest_marker("tensorflow") is not None
        if item.path.name in BACKEND_MODULES and not needs_tf:
            item.add_marker(pytest.mark.backends)
        if needs_tf and backend_name() != "tensorflow":
            item.add_marker(skip_tf)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    reset_warnings()
    yield
    reset_warnings()


@pytest.fixture
def fake_nvml(monkeypatch):
    """Two fake 16 GiB GPUs; this process uses 1 GiB on GPU 0."""
    fake = FakeNvml(
        [
            FakeGpu(
                "Fake A100",
                "GPU-aaaa-1111",
                16 * GIB,
                used=3 * GIB,
                processes={os.getpid(): GIB, 99999: 2 * GIB},
            ),
            FakeGpu("Fake A100", "GPU-bbbb-2222", 16 * GIB, used=0),
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml.reset()
    yield fake
    nvml.reset()


@pytest.fixture
def no_nvml(monkeypatch):
    """NVML absent (as on a CPU-only machine without the gpu extra)."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    nvml.reset()
    yield
    nvml.reset()


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """memguard_shapes prepared once for the whole session (about 10 s)."""
    import tensorflow_datasets as tfds

    import keras_memguard.data.pipeline  # noqa: F401  (registers the builder)

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("memguard_shapes", data_dir=data_dir).download_and_prepare()
    return data_dir
