"""``release_memory``: give memory back between phases of a program.

It runs the garbage collector, optionally ``keras.backend.clear_session()``, returns the
framework's cached device blocks (``torch.cuda.empty_cache()`` under PyTorch), optionally
drops compilation caches (``jax.clear_caches()``, ``torch._dynamo.reset()``), and asks
glibc to return freed heap pages to the system (``malloc_trim``), then reports what the
process's RSS and the device allocator did. Device figures are read only where the
framework has initialised its GPUs itself (see :mod:`keras_memguard.backends.base`).

Call it *between* phases (after ``fit``, between trials), never while
a model is training: ``clear_session`` resets Keras's layer-name counters, the global
dtype policy and seed state under a live model.

``clear_session`` recovers only part of the growth of repeated build/fit loops
(measured on TF 2.21 / Keras 3.15: 5.8 instead of 7.5 MB per iteration): TensorFlow
keeps the traced graphs of each ``fit``. Running each phase in its own process is the
full fix.

Example:
    >>> result = release_memory(clear_session=True)
    >>> print(f"freed {result.freed / 2**20:.1f} MiB")
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from keras_memguard.backends.base import DeviceMemory, current_backend
from keras_memguard.errors import invalid_argument
from keras_memguard.probes.process import read_process_memory

__all__ = ["ReleaseResult", "malloc_trim", "release_memory"]


@dataclass(frozen=True)
class ReleaseResult:
    """What :func:`release_memory` did; sizes in bytes."""

    rss_before: int | None
    rss_after: int | None
    collected: int
    cleared_session: bool
    trimmed: bool
    backend: str = ""
    device_before: tuple[DeviceMemory, ...] | None = None
    device_after: tuple[DeviceMemory, ...] | None = None
    emptied_cache: bool = False
    cleared_caches: bool = False
    generation: int = 2

    @property
    def device_freed(self) -> int | None:
        """Bytes the framework's pools gave back to the GPUs (reserved, else allocated).

        ``None`` where the framework reports no device figures (CPU, or GPUs not yet
        initialised by the framework).
        """
        if self.device_before is None or self.device_after is None:
            return None

        def held(devices: tuple[DeviceMemory, ...]) -> int:
            return sum(d.reserved if d.reserved is not None else d.allocated for d in devices)

        return max(0, held(self.device_before) - held(self.device_after))

    @property
    def freed(self) -> int:
        """How much the process's RSS dropped (0 if it did not)."""
        if self.rss_before is None or self.rss_after is None:
            return 0
        return max(0, self.rss_before - self.rss_after)


@lru_cache(maxsize=1)
def malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (gives free heap pages back to the system), or ``None``.

    Example:
        >>> trim = malloc_trim()
        >>> trim(0) if trim is not None else None
        1
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # musl has no malloc_trim
        return None


def _device(backend: Any) -> tuple[DeviceMemory, ...] | None:
    figures = backend.device_memory()
    return tuple(figures) if figures is not None else None


def release_memory(
    clear_session: bool = False,
    trim: bool = True,
    *,
    empty_cache: bool = True,
    clear_caches: bool = False,
    generation: int = 2,
) -> ReleaseResult:
    """Collects garbage (and optionally Keras's global state); returns what was freed.

    Args:
        clear_session: also call `keras.backend.clear_session()`. Only between phases.
            Under PyTorch, Keras's `clear_session` also resets `torch.compile`'s caches.
            Defaults to `False`.
        trim: ask glibc to return freed heap memory to the system. Defaults to `True`.
        empty_cache: return the framework's unused cached device blocks to the GPU
            (`torch.cuda.empty_cache()`; TensorFlow and JAX keep their pools).
            Defaults to `True`.
        clear_caches: drop compiled functions too (`jax.clear_caches()`,
            `torch._dynamo.reset()`): the next `fit` recompiles. Defaults to `False`.
        generation: the oldest generation `gc.collect` examines: `2` is a full
            collection (about 0.2 s with TensorFlow loaded), `0` or `1` a young one
            (microseconds) that leaves older cycles alone. Defaults to `2`.

    Example:
        >>> release_memory().collected >= 0
        True
    """
    if isinstance(generation, bool) or generation not in (0, 1, 2):
        raise invalid_argument("generation", generation, "0, 1 or 2")
    backend = current_backend()
    before = read_process_memory()
    device_before = _device(backend)
    if clear_session:
        import keras

        keras.backend.clear_session()
    cleared_caches = backend.clear_caches() if clear_caches else False
    collected = gc.collect(generation)
    emptied = backend.empty_cache() if empty_cache else False
    trimmed = False
    trim_fn = malloc_trim() if trim else None
    if trim_fn is not None:
        trim_fn(0)
        trimmed = True
    after = read_process_memory()
    return ReleaseResult(
        rss_before=before.rss if before else None,
        rss_after=after.rss if after else None,
        collected=collected,
        cleared_session=clear_session,
        trimmed=trimmed,
        backend=backend.name,
        device_before=device_before,
        device_after=_device(backend),
        emptied_cache=emptied,
        cleared_caches=cleared_caches,
        generation=generation,
    )
