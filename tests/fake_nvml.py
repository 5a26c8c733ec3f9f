"""A stand-in for the ``pynvml`` module, installed at ``sys.modules["pynvml"]``.

It mirrors the calls keras_memguard.probes.nvml makes, with the real error classes' shape
(an ``NVMLError`` carrying ``value``), so tests can drive devices, processes and
failures without a GPU.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    name: str
    uuid: str
    total: int
    used: int = 0
    processes: dict[int, int] = field(default_factory=dict)  # pid -> bytes
    reserved: int = 0  # the driver's own reserve, counted as used by the first memory call


class FakeNvml(types.ModuleType):
    """Configure ``gpus``, ``init_error`` and ``fail_after`` (calls before a read fails)."""

    NVMLError = NVMLError
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    nvmlMemory_v2 = 0x02000028

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        init_error: int | None = None,
        driver: str = "550.54.15",
    ) -> None:
        super().__init__("pynvml")
        self.gpus = gpus or []
        self.init_error = init_error
        self.driver = driver
        self.memory_reads_left: int | None = None  # None: never fail
        self.init_calls = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: FakeGpu) -> bytes:
        return handle.name.encode()  # older nvidia-ml-py versions return bytes

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return handle.uuid

    def nvmlDeviceGetMemoryInfo(
        self, handle: FakeGpu, version: int | None = None
    ) -> types.SimpleNamespace:
        """As the driver answers: the first call counts its reserve as used, ``_v2`` apart."""
        if self.memory_reads_left is not None:
            if self.memory_reads_left <= 0:
                raise NVMLError(NVML_ERROR_GPU_IS_LOST)
            self.memory_reads_left -= 1
        free = handle.total - handle.used - handle.reserved
        if version == self.nvmlMemory_v2:
            return types.SimpleNamespace(
                total=handle.total, reserved=handle.reserved, used=handle.used, free=free
            )
        return types.SimpleNamespace(
            total=handle.total, used=handle.used + handle.reserved, free=free
        )

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list:
        return [
            types.SimpleNamespace(pid=pid, usedGpuMemory=used)
            for pid, used in handle.processes.items()
        ]

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver
