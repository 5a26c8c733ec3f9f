"""The JAX device boundary: device memory, release and OOM recognition under JAX.

Reading must never take memory. ``jax.devices()`` initialises JAX's backends, and its
GPU backend preallocates 75% of every visible GPU by default; so this adapter never
imports JAX and reads device figures only from a GPU backend that JAX has already
created itself (``jax._src.xla_bridge._backends``). Before that, and on CPU, it
reports ``None`` and the probes fall back to NVML.

Figures come from ``Device.memory_stats()`` (XLA's allocator): ``bytes_in_use``,
``peak_bytes_in_use`` (since the process started: JAX cannot reset it),
``pool_bytes`` (what the pool holds from the GPU) and ``bytes_limit``. Each call first
drains JAX's queue of deferred array deletions, so the guard reads it at its check
interval, not per batch.

Example:
    >>> from keras_memguard.backends.jax.memory import ADAPTER
    >>> ADAPTER.is_gpu_initialized()     # False until JAX has set up a GPU backend
    False
"""

from __future__ import annotations

import sys
from typing import Any

from keras_memguard.backends.base import DeviceMemory
from keras_memguard.errors import warn_once

__all__ = ["ADAPTER", "GPU_PLATFORMS", "JaxBackend", "gpu_backend", "is_initialized"]

GPU_PLATFORMS = ("cuda", "rocm", "gpu")
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory")


def _backends() -> dict[str, Any]:
    """JAX's initialised backends by platform; empty if JAX is not loaded or not set up."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    backends = getattr(bridge, "_backends", None)
    return dict(backends) if isinstance(backends, dict) else {}


def is_initialized() -> bool:
    """Whether JAX has created any backend (after which its GPU options are fixed)."""
    return bool(_backends())


def gpu_backend() -> Any:
    """JAX's GPU client if JAX has created one, else ``None`` (never creates one)."""
    backends = _backends()
    for platform in GPU_PLATFORMS:
        if platform in backends:
            return backends[platform]
    return None


def _index(device: Any, position: int) -> int:
    hardware_id = getattr(device, "local_hardware_id", None)
    return int(hardware_id) if isinstance(hardware_id, int) else position


class JaxBackend:
    """The :class:`~keras_memguard.backends.base.Backend` adapter for JAX."""

    name = "jax"

    def is_gpu_initialized(self) -> bool:
        return gpu_backend() is not None

    def devices(self) -> list[Any]:
        """JAX's local GPU devices, or ``[]`` before JAX created its GPU backend."""
        client = gpu_backend()
        if client is None:
            return []
        return list(client.local_devices())

    def device_memory(self) -> list[DeviceMemory] | None:
        client = gpu_backend()
        if client is None:
            return None
        result = []
        try:
            for position, device in enumerate(client.local_devices()):
                stats = device.memory_stats()
                if stats is None:  # a platform without allocator statistics
                    return None
                peak = stats.get("peak_bytes_in_use")
                reserved = stats.get("pool_bytes", stats.get("bytes_reserved"))
                limit = stats.get("bytes_limit")
                result.append(
                    DeviceMemory(
                        index=_index(device, position),
                        allocated=int(stats.get("bytes_in_use", 0)),
                        peak=int(peak) if peak is not None else None,
                        reserved=int(reserved) if reserved is not None else None,
                        limit=int(limit) if limit is not None else None,
                        peak_resettable=False,
                    )
                )
        except Exception as err:  # a failing probe warns and never kills training
            warn_once("jax-memory-stats", f"keras-memguard cannot read JAX's memory_stats: {err}")
            return None
        return result

    def reset_peaks(self) -> bool:
        """JAX has no way to reset ``peak_bytes_in_use``: always ``False``."""
        return False

    def is_out_of_memory(self, error: BaseException | None, type_name: str, message: str) -> bool:
        """``RESOURCE_EXHAUSTED`` from XLA (``JaxRuntimeError``), or a host ``MemoryError``."""
        if isinstance(error, MemoryError):
            return True
        short = type_name.rsplit(".", 1)[-1]
        if short == "MemoryError":
            return True
        if short in ("JaxRuntimeError", "XlaRuntimeError"):
            return any(marker in message for marker in _OOM_MARKERS)
        return short == "RuntimeError" and "RESOURCE_EXHAUSTED" in message

    def empty_cache(self) -> bool:
        """JAX's pool keeps its blocks (no public call returns them to the GPU)."""
        return False

    def clear_caches(self) -> bool:
        """``jax.clear_caches()`` (compiled functions); ``False`` if JAX is not loaded."""
        jax = sys.modules.get("jax")
        if jax is None or not hasattr(jax, "clear_caches"):
            return False
        jax.clear_caches()
        return True


ADAPTER = JaxBackend()
