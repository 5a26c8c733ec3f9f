"""The NVML boundary: the only module that imports ``pynvml``.

``pynvml`` comes from the ``nvidia-ml-py`` distribution (``pip install
keras-memguard[gpu]``). Device indices here are CUDA's (and the frameworks') indices:
they respect ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-`` UUIDs, in the order given),
so ``index=0`` is ``/GPU:0`` even when it is physical GPU 3.

NVML numbers devices in PCI bus order; CUDA does too with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``, but by default it puts the fastest device first. On a
machine whose GPUs are all alike the two orders agree; on a mixed machine they may not,
and :func:`order_is_certain` says so (``snapshot()`` then joins figures through the
framework's UUIDs where it reports them, or warns once that they may be misplaced).

No driver, no library: every function returns ``None`` quietly. NVML failing in any
other way returns ``None`` after one warning per cause, and is tried again after a
back-off (``RETRY_FIRST_S``, doubling up to ``RETRY_MAX_S``): one transient error does
not turn GPU figures off for good.

Tests stand a fake module in at ``sys.modules["pynvml"]`` and call :func:`reset`.

Example:
    >>> for gpu in read_gpu_memory() or []:
    ...     print(gpu.index, gpu.name, gpu.used, gpu.total)
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from keras_memguard.errors import warn_once

__all__ = [
    "GpuDevice",
    "GpuMemory",
    "driver_version",
    "is_available",
    "order_is_certain",
    "parse_visible_devices",
    "read_gpu_memory",
    "reset",
    "visible_devices",
]

INSTALL_HINT = "pip install 'keras-memguard[gpu]'  (installs nvidia-ml-py)"
# After a failure NVML is left alone this long, doubling per failure up to RETRY_MAX_S.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


@dataclass(frozen=True)
class GpuDevice:
    """A GPU visible to this process. ``index`` is CUDA's, ``nvml_index`` NVML's."""

    index: int
    nvml_index: int
    name: str
    uuid: str
    total: int


@dataclass(frozen=True)
class GpuMemory:
    """A GPU's memory in bytes.

    ``process_used`` is this process's own usage as the driver reports it; ``None``
    when the driver does not say (inside a PID namespace, or before first use).
    """

    index: int
    nvml_index: int
    name: str
    total: int
    used: int
    free: int
    process_used: int | None
    uuid: str | None = None


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tried = False
        self.module: Any = None
        self.devices: list[GpuDevice] | None = None
        self.order_certain = True
        self.absent = False  # no library or driver: never tried again
        self.retry_at = float("-inf")
        self.backoff = RETRY_FIRST_S

    def failed(self) -> None:
        """A failure: leave NVML alone for a while, longer after each failure."""
        self.retry_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, RETRY_MAX_S)

    def succeeded(self) -> None:
        self.retry_at = float("-inf")
        self.backoff = RETRY_FIRST_S


_state = _State()


def reset() -> None:
    """Forgets NVML's state so that the next call imports and initializes it again."""
    global _state
    _state = _State()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_absent(nvml: ModuleType, err: Exception) -> bool:
    absent = {
        getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12),
        getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", 9),
    }
    return getattr(err, "value", None) in absent


def parse_visible_devices(value: str | None, uuids: list[str]) -> list[int] | None:
    """Maps ``CUDA_VISIBLE_DEVICES`` to NVML indices, in CUDA's order.

    Follows CUDA: entries are indices or (prefixes of) ``GPU-`` UUIDs, and parsing
    stops at the first entry that names no device. ``None`` means "all devices".

    Example:
        >>> parse_visible_devices("2,0", ["GPU-a", "GPU-b", "GPU-c"])
        [2, 0]
    """
    if value is None:
        return None
    chosen: list[int] = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry.isdigit() or (entry.startswith("-") and entry[1:].isdigit()):
            number = int(entry)
            if not 0 <= number < len(uuids):
                break
            found = number
        elif entry.startswith("GPU-"):
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
            if len(matches) != 1:
                break
            found = matches[0]
        else:
            if entry.startswith("MIG-"):
                warn_once(
                    "nvml-mig",
                    "keras-memguard does not map MIG devices in CUDA_VISIBLE_DEVICES; "
                    "GPU figures are left out.",
                )
            break
        if found in chosen:
            break
        chosen.append(found)
    return chosen


def _cuda_order(every: list[GpuDevice]) -> tuple[list[int], bool]:
    """NVML indices in CUDA's order, and whether that order is certain."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    order = parse_visible_devices(visible, [device.uuid for device in every])
    if order is None:
        order = list(range(len(every)))
    by_bus = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") == "PCI_BUS_ID"
    alike = len({every[i].name for i in order}) <= 1
    # UUIDs in CUDA_VISIBLE_DEVICES fix both the devices and their order.
    named = visible is not None and all(
        entry.strip().startswith("GPU-") for entry in visible.split(",") if entry.strip()
    )
    return order, by_bus or alike or named


def _initialize() -> Any:
    """Returns the initialized pynvml module, or ``None``. Call with the lock held."""
    state = _state
    if state.module is not None or state.absent:
        return state.module
    if time.monotonic() < state.retry_at:
        return None
    state.tried = True
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        state.absent = True
        return None
    try:
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
        every = []
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            every.append(
                GpuDevice(
                    index=i,
                    nvml_index=i,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    total=int(_memory_info(nvml, handle).total),
                )
            )
    except Exception as err:  # NVML raises NVMLError subclasses, OSError, AttributeError
        if _is_absent(nvml, err):
            state.absent = True
        else:
            warn_once(
                "nvml-init",
                f"keras-memguard cannot initialize NVML: {err}; it tries again later.",
            )
            state.failed()
        return None
    order, state.order_certain = _cuda_order(every)
    state.devices = [
        GpuDevice(
            cuda,
            nvml_index,
            every[nvml_index].name,
            every[nvml_index].uuid,
            every[nvml_index].total,
        )
        for cuda, nvml_index in enumerate(order)
    ]
    state.module = nvml
    state.succeeded()
    return nvml


def order_is_certain() -> bool:
    """Whether NVML's devices map onto CUDA's indices for sure (see the module's text).

    Example:
        >>> order_is_certain()   # False on a mixed machine without CUDA_DEVICE_ORDER
        True
    """
    with _state.lock:
        _initialize()
        return _state.order_certain


def is_available() -> bool:
    """Whether NVML works here (the driver and ``nvidia-ml-py`` are both present)."""
    with _state.lock:
        return _initialize() is not None


def visible_devices() -> list[GpuDevice] | None:
    """The GPUs this process may use, in CUDA order; ``None`` without NVML."""
    with _state.lock:
        if _initialize() is None:
            return None
        return list(_state.devices or [])


def driver_version() -> str | None:
    """The NVIDIA driver's version, or ``None``."""
    with _state.lock:
        nvml = _initialize()
        if nvml is None:
            return None
        try:
            return _text(nvml.nvmlSystemGetDriverVersion())
        except Exception as err:
            warn_once("nvml-driver", f"keras-memguard cannot read the NVIDIA driver version: {err}")
            return None


def _process_used(nvml: Any, handle: Any, pid: int) -> int | None:
    try:
        processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:
        return None
    used = [p.usedGpuMemory for p in processes if p.pid == pid and p.usedGpuMemory is not None]
    return int(sum(used)) if used else None


def _memory_info(nvml: Any, handle: Any) -> Any:
    """A device's memory as nvidia-smi shows it: ``used`` without the driver's reserve.

    NVML's first ``nvmlDeviceGetMemoryInfo`` counts the memory the driver reserves for
    itself (about 615 MiB on an H200 with driver 580) as used, so an idle GPU reads
    615 MiB used while nvidia-smi says 0. The ``_v2`` call reports that reserve apart;
    drivers and bindings without it fall back to the first call.
    """
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except Exception as err:  # older drivers: function not found / not supported
            if not _is_absent(nvml, err) and getattr(err, "value", None) is None:
                raise
    return nvml.nvmlDeviceGetMemoryInfo(handle)


def read_gpu_memory() -> list[GpuMemory] | None:
    """Reads every visible GPU's memory; ``None`` without NVML or when a read fails."""
    with _state.lock:
        nvml = _initialize()
        if nvml is None or time.monotonic() < _state.retry_at:
            return None
        pid = os.getpid()
        result = []
        try:
            for device in _state.devices or []:
                handle = nvml.nvmlDeviceGetHandleByIndex(device.nvml_index)
                info = _memory_info(nvml, handle)
                result.append(
                    GpuMemory(
                        index=device.index,
                        nvml_index=device.nvml_index,
                        name=device.name,
                        total=int(info.total),
                        used=int(info.used),
                        free=int(info.free),
                        process_used=_process_used(nvml, handle, pid),
                        uuid=device.uuid,
                    )
                )
        except Exception as err:
            warn_once(
                "nvml-read",
                f"keras-memguard cannot read GPU memory through NVML: {err}; GPU figures "
                "are left out until a later read succeeds.",
            )
            _state.failed()
            return None
        _state.succeeded()
        return result
