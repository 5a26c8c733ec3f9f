"""On a real NVIDIA GPU: what the JAX and PyTorch adapters read, and what a read costs.

Needs JAX with its CUDA plugin and/or PyTorch with CUDA, plus nvidia-ml-py; Keras is
not needed (the adapters import neither Keras nor a framework). Each scenario runs in
a fresh process, since JAX and torch fix their GPU settings when they initialise:

    python benchmarks/gpu_check_backends.py            # every scenario, JSON per scenario
    python benchmarks/gpu_check_backends.py jax_default

It prints figures; it asserts nothing (the tests do, on a faked boundary).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

GIB = 2**30
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _nvml() -> list[tuple[int, int | None, int, int]]:
    from keras_memguard.probes import nvml

    nvml.reset()
    return [(d.index, d.process_used, d.used, d.total) for d in nvml.read_gpu_memory() or []]


def _per_call_us(fn: Any, n: int = 200) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def _figures(adapter: Any) -> list[dict[str, Any]]:
    return [d.__dict__ for d in adapter.device_memory() or []]


def jax_default() -> dict[str, Any]:
    """Reads before JAX's first op initialise nothing; figures and costs after it."""
    os.environ["KERAS_BACKEND"] = "jax"
    import keras_memguard as mg
    from keras_memguard.backends.base import current_backend
    from keras_memguard.backends.configure import current_gpu_configuration
    from keras_memguard.cli.doctor import doctor_report

    adapter = current_backend()
    import jax
    import jax.numpy as jnp
    from jax._src import xla_bridge

    mg.snapshot()
    current_gpu_configuration()
    mg.release_memory()
    doctor_report()
    out: dict[str, Any] = {
        "backends_initialized_after_reads": xla_bridge.backends_are_initialized(),
        "nvml_before_first_op": _nvml(),
    }
    jnp.ones((1024, 1024)).block_until_ready()
    out["gpu_initialized"] = adapter.is_gpu_initialized()
    out["figures"] = _figures(adapter)
    out["nvml_after_first_op"] = _nvml()
    device = jax.devices()[0]
    out["memory_stats_keys"] = sorted(device.memory_stats() or {})
    out["device"] = {k: str(getattr(device, k, None)) for k in ("id", "local_hardware_id")}
    out["memory_stats_us"] = _per_call_us(device.memory_stats)
    out["adapter_read_us"] = _per_call_us(adapter.device_memory)
    arrays = [jnp.ones((256,)) + i for i in range(2000)]
    jax.block_until_ready(arrays)
    del arrays
    start = time.perf_counter()
    adapter.device_memory()
    out["read_after_2000_dropped_arrays_us"] = (time.perf_counter() - start) * 1e6
    big = jnp.ones((GIB // 4,), jnp.float32)
    big.block_until_ready()
    out["allocated_with_1gib_array"] = adapter.device_memory()[0].allocated
    del big
    out["allocated_after_del"] = adapter.device_memory()[0].allocated
    out["peak"] = adapter.device_memory()[0].peak
    released = mg.release_memory(clear_caches=True)
    out["release"] = {"cleared": released.cleared_caches, "device_freed": released.device_freed}
    try:
        mg.configure_gpus(memory_growth=True)
        out["configure_after_init"] = "no error"
    except Exception as err:
        out["configure_after_init"] = f"{type(err).__name__}: {err}"[:300]
    return out


def jax_configured() -> dict[str, Any]:
    """configure_gpus(8 GiB, growth) under JAX: the limit JAX applies, and its OOM."""
    os.environ["KERAS_BACKEND"] = "jax"
    import keras_memguard as mg
    from keras_memguard.backends.base import current_backend

    report = mg.configure_gpus(memory_limit="8GiB", memory_growth=True)
    out: dict[str, Any] = {"report": str(report)}
    import jax.numpy as jnp

    adapter = current_backend()
    jnp.ones((1024,)).block_until_ready()
    out["figures"] = _figures(adapter)
    out["nvml"] = _nvml()
    try:
        jnp.ones((3 * GIB,), jnp.float32).block_until_ready()  # 12 GiB > 8 GiB
        out["oom"] = "no OOM"
    except Exception as err:
        out["oom"] = {
            "type": f"{type(err).__module__}.{type(err).__qualname__}",
            "message": str(err)[:300],
            "recognised": adapter.is_out_of_memory(err, type(err).__qualname__, str(err)),
        }
    return out


def torch_configured() -> dict[str, Any]:
    """Reads initialise no CUDA; configure_gpus(10 GiB, async allocator); OOM; release."""
    os.environ["KERAS_BACKEND"] = "torch"
    import keras_memguard as mg
    from keras_memguard.backends.base import current_backend
    from keras_memguard.backends.configure import current_gpu_configuration
    from keras_memguard.cli.doctor import doctor_report
    from keras_memguard.probes import nvml

    adapter = current_backend()
    import torch

    mg.snapshot()
    current_gpu_configuration()
    mg.release_memory()
    adapter.device_memory()
    adapter.reset_peaks()
    doctor_report()
    out: dict[str, Any] = {
        "cuda_initialized_after_reads": torch.cuda.is_initialized(),
        "nvml_before": _nvml(),
    }
    report = mg.configure_gpus(memory_limit="10GiB", allocator="cuda_malloc_async")
    out["report"] = str(report)
    out["allocator_backend"] = torch.cuda.get_allocator_backend()
    x = torch.ones(GIB // 4, device="cuda")
    out["figures"] = _figures(adapter)
    del x
    out["reset"] = adapter.reset_peaks()
    out["figures_after_reset"] = _figures(adapter)
    out["adapter_read_us"] = _per_call_us(adapter.device_memory)
    try:
        torch.empty(3 * GIB, device="cuda")  # 12 GiB > 10 GiB
        out["oom"] = "no OOM"
    except Exception as err:
        out["oom"] = {
            "type": f"{type(err).__module__}.{type(err).__qualname__}",
            "message": str(err)[:200],
            "recognised": adapter.is_out_of_memory(err, type(err).__qualname__, str(err)),
        }
    released = mg.release_memory()
    out["release"] = {"emptied": released.emptied_cache, "device_freed": released.device_freed}
    out["nvml_end"] = _nvml()
    out["nvml_uuids"] = [d.uuid for d in nvml.visible_devices() or []]
    return out


def torch_native() -> dict[str, Any]:
    """The native caching allocator: reserved vs allocated, and empty_cache's effect."""
    os.environ["KERAS_BACKEND"] = "torch"
    import torch

    import keras_memguard as mg
    from keras_memguard.backends.base import current_backend

    adapter = current_backend()
    keep = torch.ones(GIB // 4, device="cuda")
    drop = torch.ones(GIB // 4, device="cuda")
    del drop
    out: dict[str, Any] = {"figures": _figures(adapter)}
    released = mg.release_memory()
    out["release"] = {
        "emptied": released.emptied_cache,
        "device_freed": released.device_freed,
        "after": [d.__dict__ for d in released.device_after or []],
    }
    out["adapter_read_us"] = _per_call_us(adapter.device_memory)
    del keep
    return out


SCENARIOS = (jax_default, jax_configured, torch_configured, torch_native)

if __name__ == "__main__":
    if len(sys.argv) > 1:
        result = {f.__name__: f for f in SCENARIOS}[sys.argv[1]]()
        print(json.dumps(result, default=str, indent=1))
        sys.exit(0)
    for scenario in SCENARIOS:
        print(f"===== {scenario.__name__}", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, scenario.__name__],
            capture_output=True,
            text=True,
            timeout=170,
        )
        print(proc.stdout[-6000:], flush=True)
        if proc.returncode:
            print("exit", proc.returncode, proc.stderr[-3000:], flush=True)
