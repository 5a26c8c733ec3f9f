"""The one small interface every framework adapter implements, and how one is picked.

An adapter reads its framework's device memory, resets peaks, releases memory and
recognises the framework's out-of-memory errors. Reading must never take memory: an
adapter reports figures only once its framework has initialised its GPUs by itself
(``device_memory()`` returns ``None`` before), because asking earlier would initialise
them (JAX preallocates 75% of every GPU; PyTorch creates a CUDA context per device).

Example:
    >>> backend = current_backend()        # from KERAS_BACKEND, never imports a framework
    >>> backend.name
    'tensorflow'
    >>> backend.device_memory()            # None until the framework has set up its GPUs
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "BACKENDS",
    "Backend",
    "DeviceMemory",
    "NullBackend",
    "backend_name",
    "current_backend",
    "tensorflow_kept_out",
]

BACKENDS = ("tensorflow", "jax", "torch")


@dataclass(frozen=True)
class DeviceMemory:
    """One device's figures from its framework's allocator, in bytes.

    Attributes:
        index: the framework's device index (CUDA order: ``/GPU:0``, ``cuda:0``).
        allocated: bytes of live arrays/tensors now.
        peak: the allocator's peak (since the last reset where ``peak_resettable``,
            else since the process started); ``None`` if not reported.
        reserved: bytes the framework's pool holds from the device (>= allocated);
            ``None`` if not reported.
        limit: the framework's own cap on its pool; ``None`` if none or unknown.
        peak_resettable: whether :meth:`Backend.reset_peaks` can reset ``peak``.
        uuid: the device's UUID (``GPU-...``) where the framework says, for NVML mapping.
    """

    index: int
    allocated: int
    peak: int | None = None
    reserved: int | None = None
    limit: int | None = None
    peak_resettable: bool = False
    uuid: str | None = None


class Backend(Protocol):
    """What the guard, ``snapshot()`` and ``release_memory`` need from a framework."""

    name: str

    def is_gpu_initialized(self) -> bool:
        """Whether the framework has set up its GPU devices (never initialises them)."""
        ...

    def device_memory(self) -> list[DeviceMemory] | None:
        """Each GPU's allocator figures; ``None`` before initialisation or on failure."""
        ...

    def reset_peaks(self) -> bool:
        """Resets the allocator peaks where the framework allows; returns whether it did."""
        ...

    def is_out_of_memory(self, error: BaseException | None, type_name: str, message: str) -> bool:
        """Whether an error (or its type name and message, from a child) is a device OOM."""
        ...

    def empty_cache(self) -> bool:
        """Returns the allocator's unused cached blocks to the device; whether it did."""
        ...

    def clear_caches(self) -> bool:
        """Drops the framework's compilation caches (the next call recompiles)."""
        ...


def backend_name() -> str:
    """The Keras backend in use or configured, without importing Keras or a framework.

    Keras's own choice when Keras is imported, else ``KERAS_BACKEND``, else
    ``~/.keras/keras.json`` (``$KERAS_HOME``), else ``"tensorflow"``.
    """
    keras = sys.modules.get("keras")
    config = getattr(keras, "config", None)
    if config is not None and hasattr(config, "backend"):
        return str(config.backend())
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    path = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "keras.json")
    try:
        with open(path) as f:
            return str(json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError):
        return "tensorflow"


class NullBackend:
    """A backend without device figures (Keras's ``numpy`` and ``openvino`` backends)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def is_gpu_initialized(self) -> bool:
        return False

    def device_memory(self) -> list[DeviceMemory] | None:
        return None

    def reset_peaks(self) -> bool:
        return False

    def is_out_of_memory(self, error: BaseException | None, type_name: str, message: str) -> bool:
        return isinstance(error, MemoryError) or type_name.rsplit(".", 1)[-1] == "MemoryError"

    def empty_cache(self) -> bool:
        return False

    def clear_caches(self) -> bool:
        return False


_adapters: dict[str, Backend] = {}


def current_backend(name: str | None = None) -> Backend:
    """The adapter for ``name`` (default: :func:`backend_name`); importing it is cheap.

    Example:
        >>> current_backend("jax").name
        'jax'
    """
    name = name or backend_name()
    adapter = _adapters.get(name)
    if adapter is None:
        if name in BACKENDS:
            adapter = importlib.import_module(f"keras_memguard.backends.{name}").ADAPTER
        else:
            adapter = NullBackend(name)
        _adapters[name] = adapter
    return adapter


@contextmanager
def tensorflow_kept_out() -> Iterator[None]:
    """Keeps Keras from importing TensorFlow just to look for its types (non-TF backends).

    Keras's ``model.save()`` asks ``module_utils.tensorflow.available`` while it
    serializes, which imports TensorFlow whenever it is installed (seconds, hundreds of
    MiB, and GPU memory beside JAX's or torch's pool). Under another backend, with
    TensorFlow not imported, no object can be a TensorFlow type, so answering "not
    available" for the duration is exact. Nothing changes under TensorFlow.

    Example:
        >>> with tensorflow_kept_out():
        ...     model.save("guard.keras")
    """
    lazy: Any = None
    if backend_name() != "tensorflow" and "tensorflow" not in sys.modules:
        utils = sys.modules.get("keras.src.utils.module_utils")
        candidate = getattr(utils, "tensorflow", None)
        if getattr(candidate, "_available", True) is None:
            lazy = candidate
            lazy._available = False
    try:
        yield
    finally:
        if lazy is not None and "tensorflow" not in sys.modules:
            lazy._available = None
