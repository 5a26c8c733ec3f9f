"""The framework adapters: device figures only after the framework set up its GPUs, OOM
recognition from real errors, and release_memory per backend.

The GPU is faked at one narrow boundary per framework: for JAX, a GPU client planted in
``jax._src.xla_bridge._backends`` (where JAX keeps the backends it created); for
PyTorch, the ``torch.cuda`` allocator-statistics functions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from keras_memguard.backends.base import current_backend

pytestmark = pytest.mark.backends
GIB = 2**30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, backend: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- JAX ---------------------------------------------------------------------------


class FakeJaxGpu:
    def __init__(self, hardware_id, stats):
        self.local_hardware_id = hardware_id
        self.stats = stats
        self.reads = 0

    def memory_stats(self):
        self.reads += 1
        if isinstance(self.stats, Exception):
            raise self.stats
        return self.stats


class FakeJaxClient:
    platform = "cuda"

    def __init__(self, devices):
        self.devices = devices

    def local_devices(self):
        return list(self.devices)


@pytest.fixture
def jax_bridge(monkeypatch):
    pytest.importorskip("jax")
    from jax._src import xla_bridge

    monkeypatch.setattr(xla_bridge, "_backends", dict(xla_bridge._backends))
    return xla_bridge


def _stats(in_use, peak, pool, limit):
    return {
        "bytes_in_use": in_use,
        "peak_bytes_in_use": peak,
        "pool_bytes": pool,
        "bytes_limit": limit,
        "num_allocs": 7,
    }


def test_jax_reports_nothing_before_jax_creates_a_gpu_backend(jax_bridge):
    adapter = current_backend("jax")
    jax_bridge._backends.pop("cuda", None)
    assert adapter.is_gpu_initialized() is False
    assert adapter.device_memory() is None


def test_jax_reads_memory_stats_of_an_initialised_gpu_backend(jax_bridge):
    gpus = [
        FakeJaxGpu(0, _stats(1 * GIB, 3 * GIB, 12 * GIB, 12 * GIB)),
        FakeJaxGpu(1, _stats(2 * GIB, 2 * GIB, 12 * GIB, 12 * GIB)),
    ]
    jax_bridge._backends["cuda"] = FakeJaxClient(gpus)
    adapter = current_backend("jax")
    assert adapter.is_gpu_initialized()
    first, second = adapter.device_memory()
    assert (first.index, first.allocated, first.peak, first.reserved, first.limit) == (
        0,
        1 * GIB,
        3 * GIB,
        12 * GIB,
        12 * GIB,
    )
    assert second.allocated == 2 * GIB
    # JAX cannot reset its peak: the adapter says so instead of pretending.
    assert first.peak_resettable is False
    assert adapter.reset_peaks() is False


def test_jax_memory_stats_failure_warns_once_and_reads_none(jax_bridge):
    jax_bridge._backends["cuda"] = FakeJaxClient([FakeJaxGpu(0, RuntimeError("driver gone"))])
    adapter = current_backend("jax")
    with pytest.warns(Warning, match="driver gone"):
        assert adapter.device_memory() is None
    assert adapter.device_memory() is None  # no second warning, no exception


def test_jax_out_of_memory_is_recognised_from_a_real_xla_error():
    jnp = pytest.importorskip("jax.numpy")
    adapter = current_backend("jax")
    with pytest.raises(Exception) as caught:
        jnp.zeros((2**42,), dtype=jnp.float32).block_until_ready()  # 16 TiB on the CPU
    err = caught.value
    assert "RESOURCE_EXHAUSTED" in str(err)
    assert adapter.is_out_of_memory(err, type(err).__qualname__, str(err))
    # As a child reports it: the qualified type name and the message, no object.
    name = f"{type(err).__module__}.{type(err).__qualname__}"
    assert adapter.is_out_of_memory(None, name, str(err))
    assert not adapter.is_out_of_memory(None, name, "INVALID_ARGUMENT: bad shape")
    assert not adapter.is_out_of_memory(ValueError("x"), "ValueError", "x")


def test_reading_jax_figures_imports_and_initialises_nothing():
    result = run_python(
        """
        import sys
        import keras_memguard as mg
        from keras_memguard.backends.base import current_backend
        adapter = current_backend()
        assert adapter.name == "jax"
        assert adapter.device_memory() is None and not adapter.is_gpu_initialized()
        from keras_memguard.cli.doctor import doctor_report
        mg.snapshot(); mg.release_memory(); doctor_report()
        loaded = [m for m in ("jax", "tensorflow", "torch") if m in sys.modules]
        assert loaded == [], loaded
        import jax
        from jax._src import xla_bridge
        mg.snapshot(); adapter.device_memory(); mg.release_memory(); doctor_report()
        assert not xla_bridge.backends_are_initialized()
        print("ok")
        """,
        "jax",
    )
    if "No module named 'jax'" in result.stderr:
        pytest.skip("jax is not installed in this environment")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_jax_release_clears_compilation_caches_only_when_asked(monkeypatch):
    jax = pytest.importorskip("jax")
    import keras_memguard as mg
    from keras_memguard.backends import base

    monkeypatch.setattr(base, "backend_name", lambda: "jax")
    double = jax.jit(lambda x: x * 2)
    double(1.0)
    assert double._cache_size() == 1
    kept = mg.release_memory()
    assert kept.cleared_caches is False and double._cache_size() == 1
    cleared = mg.release_memory(clear_caches=True)
    assert cleared.cleared_caches is True and double._cache_size() == 0


# --- PyTorch -----------------------------------------------------------------------


@pytest.fixture
def torch_cuda(monkeypatch):
    """torch.cuda's allocator counters for two fake GPUs; GPU 0 holds a context."""
    torch = pytest.importorskip("torch")
    state = {
        "initialized": True,
        "stats": {
            0: {"allocated": (1 * GIB, 5 * GIB), "reserved": 6 * GIB},
            1: {"allocated": (0, 0), "reserved": 0},
        },
        "fraction": {0: 0.5, 1: 1.0},
        "reset": [],
        "emptied": 0,
    }

    def nested(index):
        if not state["initialized"]:
            return {}
        s = state["stats"][index]
        current, peak = s["allocated"]
        return {
            "allocated_bytes": {"all": {"current": current, "peak": peak}},
            "reserved_bytes": {"all": {"current": s["reserved"], "peak": s["reserved"]}},
        }

    class Props:
        total_memory = 16 * GIB
        uuid = "aaaa-1111"

    def reset(index):
        state["reset"].append(index)
        current, _ = state["stats"][index]["allocated"]
        state["stats"][index]["allocated"] = (current, current)

    def empty():
        state["emptied"] += 1
        for s in state["stats"].values():
            s["reserved"] = s["allocated"][0]

    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_initialized", lambda: state["initialized"])
    monkeypatch.setattr(cuda, "device_count", lambda: 2)
    monkeypatch.setattr(cuda, "memory_stats_as_nested_dict", nested)
    monkeypatch.setattr(cuda, "get_device_properties", lambda i: Props())
    monkeypatch.setattr(cuda, "get_per_process_memory_fraction", lambda i: state["fraction"][i])
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(cuda, "empty_cache", empty)
    monkeypatch.setattr(torch._C, "_cuda_hasPrimaryContext", lambda i: i == 0, raising=False)
    return state


def test_torch_reports_nothing_before_cuda_is_initialised(torch_cuda):
    torch_cuda["initialized"] = False
    adapter = current_backend("torch")
    assert adapter.device_memory() is None
    assert adapter.reset_peaks() is False
    assert adapter.empty_cache() is False


def test_torch_reads_the_caching_allocator(torch_cuda):
    adapter = current_backend("torch")
    first, second = adapter.device_memory()
    assert (first.allocated, first.peak, first.reserved) == (1 * GIB, 5 * GIB, 6 * GIB)
    assert first.limit == 8 * GIB  # fraction 0.5 of 16 GiB
    assert first.uuid == "GPU-aaaa-1111"
    assert first.peak_resettable is True
    # GPU 1 has no context: its properties are not asked for (that would create one).
    assert (second.allocated, second.limit, second.uuid) == (0, None, None)
    assert adapter.reset_peaks() is True
    assert torch_cuda["reset"] == [0, 1]
    assert adapter.device_memory()[0].peak == 1 * GIB


def test_torch_release_empties_the_cache_and_reports_device_figures(torch_cuda, monkeypatch):
    from keras_memguard.backends import base
    from keras_memguard.guard.release import release_memory

    monkeypatch.setattr(base, "backend_name", lambda: "torch")
    result = release_memory()
    assert result.backend == "torch" and result.emptied_cache
    assert result.device_before[0].reserved == 6 * GIB
    assert result.device_after[0].reserved == 1 * GIB
    assert result.device_freed == 5 * GIB
    kept = release_memory(empty_cache=False)
    assert kept.emptied_cache is False and torch_cuda["emptied"] == 1


def test_torch_out_of_memory_is_recognised_from_real_errors():
    torch = pytest.importorskip("torch")
    adapter = current_backend("torch")
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**42)  # 16 TiB on the CPU: the allocator refuses
    err = caught.value
    assert adapter.is_out_of_memory(err, type(err).__name__, str(err))
    cuda_oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    assert adapter.is_out_of_memory(cuda_oom, "torch.OutOfMemoryError", str(cuda_oom))
    assert adapter.is_out_of_memory(None, "torch.OutOfMemoryError", "")
    assert not adapter.is_out_of_memory(None, "RuntimeError", "shape mismatch")


def test_reading_torch_figures_initialises_no_cuda():
    result = run_python(
        """
        import sys
        import keras_memguard as mg
        from keras_memguard.backends.base import current_backend
        adapter = current_backend()
        assert adapter.name == "torch"
        from keras_memguard.cli.doctor import doctor_report
        mg.snapshot(); mg.release_memory(); adapter.device_memory(); adapter.reset_peaks()
        doctor_report()
        assert [m for m in ("torch", "tensorflow", "jax") if m in sys.modules] == []
        import torch
        mg.snapshot(); mg.release_memory(); adapter.device_memory(); adapter.reset_peaks()
        doctor_report()
        assert not torch.cuda.is_initialized()
        print("ok")
        """,
        "torch",
    )
    if "No module named 'torch'" in result.stderr:
        pytest.skip("torch is not installed in this environment")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- TensorFlow and the rest -------------------------------------------------------


def test_tensorflow_out_of_memory_by_name():
    adapter = current_backend("tensorflow")
    assert adapter.is_out_of_memory(None, "tensorflow.errors.ResourceExhaustedError", "OOM")
    assert not adapter.is_out_of_memory(None, "tensorflow.errors.InvalidArgumentError", "")


def test_other_keras_backends_have_no_device_figures():
    adapter = current_backend("numpy")
    assert adapter.device_memory() is None and adapter.reset_peaks() is False
    assert adapter.is_out_of_memory(MemoryError(), "MemoryError", "")


def test_the_leak_code_sees_this_backends_tensors_and_their_sizes():
    import keras

    from keras_memguard.backends.base import describe_tensor, tensor_types

    tensor = keras.ops.zeros((32, 8), dtype="float32")
    assert isinstance(tensor, tensor_types())
    text, nbytes = describe_tensor(tensor)
    assert nbytes == 32 * 8 * 4
    assert "float32[32,8] on " in text


def test_every_framework_folder_answers_the_same_calls():
    from keras_memguard.backends.base import BACKENDS, backend_module

    votes = {name: backend_module(name, "distributed").supports_vote() for name in BACKENDS}
    assert votes == {"tensorflow": True, "jax": True, "torch": False}
    for name in BACKENDS:
        oom = backend_module(name, "oom").is_out_of_memory
        assert oom(MemoryError(), "MemoryError", "") and not oom(None, "ValueError", "x")
        context = backend_module(name, "distributed").worker_context(object())
        assert not context.multi_worker and context.any_worker(True) is True
        assert backend_module(name, "introspect").cannot_travel(object()) is None
    with pytest.raises(ValueError, match="module='trainer'"):
        backend_module("jax", "trainer")  # not one of MODULES
