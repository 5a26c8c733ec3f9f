"""The TensorFlow device boundary: device memory, peaks and release under TensorFlow.

Probes (:func:`read_allocator_memory`) never import TensorFlow and never initialize its
devices: they read only once TensorFlow has initialized them itself, because after that
``configure_gpus`` can no longer take effect. The configuration calls are in
``configure.py`` (:class:`~keras_memguard.backends.tensorflow.configure.TensorFlowDevices`).

Example:
    >>> is_initialized()        # False until TensorFlow runs its first op
    False
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from keras_memguard.backends.base import DeviceMemory
from keras_memguard.backends.tensorflow import compat, oom
from keras_memguard.compat import resolve
from keras_memguard.errors import warn_once

__all__ = [
    "ADAPTER",
    "AllocatorMemory",
    "TensorFlowBackend",
    "is_initialized",
    "read_allocator_memory",
    "reset_allocator_peaks",
]


@dataclass(frozen=True)
class AllocatorMemory:
    """TensorFlow's allocator figures for one logical GPU, in bytes."""

    index: int
    current: int
    peak: int


def _context() -> Any:
    if "tensorflow" not in sys.modules:
        return None
    context = resolve(compat.CONTEXT)
    return context() if context is not None else None


def is_initialized() -> bool:
    """Whether TensorFlow has initialized its devices (never imports TensorFlow)."""
    ctx = _context()
    return ctx is not None and getattr(ctx, compat.CONTEXT_HANDLE, None) is not None


def _logical_gpus() -> list[Any]:
    import tensorflow as tf

    return list(tf.config.list_logical_devices("GPU"))


def read_allocator_memory() -> list[AllocatorMemory] | None:
    """Current and peak bytes of each logical GPU; ``None`` before initialization.

    On a machine without GPUs it returns an empty list once TensorFlow runs.
    """
    if not is_initialized():
        return None
    import tensorflow as tf

    result = []
    try:
        for index, _device in enumerate(_logical_gpus()):
            info = tf.config.experimental.get_memory_info(f"GPU:{index}")
            result.append(AllocatorMemory(index, int(info["current"]), int(info["peak"])))
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        warn_once("tf-allocator", f"keras-memguard cannot read TensorFlow's GPU allocator: {err}")
        return None
    return result


def reset_allocator_peaks() -> None:
    """Resets each logical GPU's peak to its current use (start of an epoch)."""
    if not is_initialized():
        return
    import tensorflow as tf

    try:
        for index, _device in enumerate(_logical_gpus()):
            tf.config.experimental.reset_memory_stats(f"GPU:{index}")
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        warn_once("tf-allocator-reset", f"keras-memguard cannot reset GPU memory stats: {err}")


class TensorFlowBackend:
    """The :class:`~keras_memguard.backends.base.Backend` adapter for TensorFlow."""

    name = "tensorflow"

    def is_gpu_initialized(self) -> bool:
        return is_initialized()

    def device_memory(self) -> list[DeviceMemory] | None:
        figures = read_allocator_memory()
        if figures is None:
            return None
        return [
            DeviceMemory(index=f.index, allocated=f.current, peak=f.peak, peak_resettable=True)
            for f in figures
        ]

    def reset_peaks(self) -> bool:
        if not is_initialized():
            return False
        reset_allocator_peaks()
        return True

    is_out_of_memory = staticmethod(oom.is_out_of_memory)

    def empty_cache(self) -> bool:
        """TensorFlow's BFC allocator never hands memory back while the process lives."""
        return False

    def clear_caches(self) -> bool:
        """``keras.backend.clear_session()`` clears TensorFlow's kernel cache; nothing more."""
        return False

    def wait_for_steps(self, model: Any, marker: Any, all_of_them: bool) -> Any:
        """Each step has run when Keras's loop gets its results back: nothing to wait for."""
        return marker


ADAPTER = TensorFlowBackend()
