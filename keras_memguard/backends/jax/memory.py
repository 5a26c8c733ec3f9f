"""The JAX device boundary: device memory, release and OOM recognition under JAX.

Reading must never take memory. ``jax.devices()`` initialises JAX's backends, and its
GPU backend preallocates 75% of every visible GPU by default; so this adapter never
imports JAX to read and reads device figures only from a GPU backend that JAX has
already created itself (``jax._src.xla_bridge._backends``, named in ``compat.py``).
Before that, and on CPU, it reports ``None`` and the probes fall back to NVML.

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
from keras_memguard.backends.jax import compat, oom
from keras_memguard.compat import keras as keras_compat
from keras_memguard.compat import resolve
from keras_memguard.errors import warn_once

__all__ = ["ADAPTER", "GPU_PLATFORMS", "JaxBackend", "gpu_backend", "is_initialized"]

GPU_PLATFORMS = ("cuda", "rocm", "gpu")


def _backends() -> dict[str, Any]:
    """JAX's initialised backends by platform; empty if JAX is not loaded or not set up."""
    backends = resolve(compat.BACKENDS, loaded_only=True)
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

    is_out_of_memory = staticmethod(oom.is_out_of_memory)

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

    def wait_for_steps(self, model: Any, marker: Any, all_of_them: bool) -> Any:
        """Waits for dispatched steps, so that a check sees their memory.

        Keras's JAX loop dispatches steps without waiting for them (tens of steps ahead
        when nothing reads their results). A check waits for the steps dispatched up
        to the previous check (``marker``): the memory it reads lags by at most one
        check interval, and the pipeline never drains. ``all_of_them`` waits for every
        step (once per epoch, before validation). Returns the next marker.
        """
        state = getattr(model, keras_compat.JAX_STATE_ATTRIBUTE, None)
        new_marker = None
        try:
            import jax

            # Keras's tracked dict of lists of arrays: not a pytree JAX walks into. The
            # next step takes these buffers over (donation), so the marker is a copy of
            # the smallest: a tiny op that is done once the step it reads is done.
            arrays = [a for group in dict(state or {}).values() for a in group]
            if arrays:
                new_marker = min(arrays, key=lambda a: a.size).copy()
            wait_for = arrays if all_of_them else marker
            if wait_for is not None:
                jax.block_until_ready(wait_for)
        except Exception as err:  # a failed wait must never stop training
            warn_once(
                "jax-wait",
                f"keras-memguard: could not wait for JAX's dispatched steps ({err}); "
                "checks may see memory a few steps early.",
            )
        return new_marker


ADAPTER = JaxBackend()
