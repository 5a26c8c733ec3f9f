"""Shared fixtures: a fake NVML module stood in at the boundary, and clean warning state."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fake_nvml import FakeGpu, FakeNvml

from keras_memguard.errors import reset_warnings
from keras_memguard.probes import nvml

GIB = 2**30


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
