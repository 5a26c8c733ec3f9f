"""The PyTorch device boundary: device memory, release and OOM recognition under torch.

Reading must never take memory: ``torch.cuda.mem_get_info()``,
``get_device_properties()`` and ``set_per_process_memory_fraction()`` create a CUDA
context (about 500 MiB) on each device they touch. So this adapter never imports torch,
reads only once torch has initialised CUDA itself (``torch.cuda.is_initialized()``),
and asks for a device's properties only where torch already holds a context on it.

Figures come from the caching allocator's statistics, which are host-side counters:
``allocated`` (``memory_allocated``), ``peak`` (``max_memory_allocated``, reset by
``reset_peak_memory_stats``), ``reserved`` (``memory_reserved``: what the cache holds
from the GPU) and ``limit`` (``get_per_process_memory_fraction`` x total, where set).

Example:
    >>> from keras_memguard.backends.torch.memory import ADAPTER
    >>> ADAPTER.is_gpu_initialized()     # False until torch initialises CUDA
    False
"""

from __future__ import annotations

import sys
from typing import Any

from keras_memguard.backends.base import DeviceMemory
from keras_memguard.backends.torch import compat, oom
from keras_memguard.compat import resolve
from keras_memguard.errors import warn_once

__all__ = ["ADAPTER", "TorchBackend", "is_initialized"]


def _cuda() -> Any:
    """``torch.cuda`` if torch is loaded, else ``None`` (never imports torch)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "cuda", None) if torch is not None else None


def is_initialized() -> bool:
    """Whether torch has initialised CUDA (after which its allocator settings are fixed)."""
    cuda = _cuda()
    try:
        return bool(cuda is not None and cuda.is_initialized())
    except Exception:
        return False


def _has_context(index: int) -> bool:
    check = resolve(compat.HAS_PRIMARY_CONTEXT, loaded_only=True)
    return bool(check(index)) if check is not None else False


def _uuid(properties: Any) -> str | None:
    uuid = getattr(properties, "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


class TorchBackend:
    """The :class:`~keras_memguard.backends.base.Backend` adapter for PyTorch."""

    name = "torch"

    def is_gpu_initialized(self) -> bool:
        return is_initialized()

    def device_memory(self) -> list[DeviceMemory] | None:
        if not is_initialized():
            return None
        cuda = _cuda()
        result = []
        try:
            for index in range(cuda.device_count()):
                stats = cuda.memory_stats_as_nested_dict(index)
                allocated = stats.get("allocated_bytes", {}).get("all", {})
                reserved = stats.get("reserved_bytes", {}).get("all", {})
                limit = uuid = None
                if _has_context(index):
                    properties = cuda.get_device_properties(index)
                    uuid = _uuid(properties)
                    get_fraction = getattr(cuda, "get_per_process_memory_fraction", None)
                    fraction = float(get_fraction(index)) if get_fraction else 1.0  # torch<2.5
                    if fraction < 1.0:
                        limit = int(fraction * properties.total_memory)
                result.append(
                    DeviceMemory(
                        index=index,
                        allocated=int(allocated.get("current", 0)),
                        peak=int(allocated.get("peak", 0)),
                        reserved=int(reserved.get("current", 0)),
                        limit=limit,
                        peak_resettable=True,
                        uuid=uuid,
                    )
                )
        except Exception as err:  # a failing probe warns and never kills training
            warn_once("torch-memory", f"keras-memguard cannot read torch's CUDA allocator: {err}")
            return None
        return result

    def reset_peaks(self) -> bool:
        if not is_initialized():
            return False
        cuda = _cuda()
        try:
            for index in range(cuda.device_count()):
                cuda.reset_peak_memory_stats(index)
        except Exception as err:
            warn_once("torch-reset", f"keras-memguard cannot reset torch's CUDA peaks: {err}")
            return False
        return True

    is_out_of_memory = staticmethod(oom.is_out_of_memory)

    def empty_cache(self) -> bool:
        """Returns the caching allocator's unused blocks to the GPU; ``False`` before CUDA."""
        if not is_initialized():
            return False
        _cuda().empty_cache()
        return True

    def clear_caches(self) -> bool:
        """Resets ``torch.compile``'s caches (``torch._dynamo.reset()``) if loaded."""
        reset = resolve(compat.DYNAMO_RESET, loaded_only=True)
        if reset is None:
            return False
        reset()
        return True

    def wait_for_steps(self, model: Any, marker: Any, all_of_them: bool) -> Any:
        """Each step has run when Keras's loop gets its results back: nothing to wait for."""
        return marker


ADAPTER = TorchBackend()
