"""PyTorch's part of ``configure_gpus``: the per-process memory fraction and the allocator.

``torch.cuda.set_per_process_memory_fraction`` caps each GPU (it creates a CUDA context
on the GPU it touches, so it is called only where a limit is asked); the allocator
backend (``PYTORCH_ALLOC_CONF``, or its older name ``PYTORCH_CUDA_ALLOC_CONF``) and
``CUDA_VISIBLE_DEVICES`` are read when torch initializes CUDA, so they are set before.
PyTorch always grows on demand. All ``torch.cuda`` calls go through
:class:`TorchDevices`, so tests stand in a fake.

Example:
    >>> configure(GpuRequest("4GiB", None, None, 1, None)).gpus[0].memory_limit
    4294967296
"""

from __future__ import annotations

import logging
import os
from typing import Any

from keras_memguard.backends.configure import (
    LIMIT_FORMS,
    GpuConfigReport,
    GpuRequest,
    GpuSetting,
    adapter_configuration,
    apply_environment,
    environment,
    package_reads,
    visible_devices,
)
from keras_memguard.backends.torch.memory import is_initialized
from keras_memguard.errors import invalid_argument
from keras_memguard.sizes import format_bytes

__all__ = ["ALLOCATORS", "TorchDevices", "configure", "current_configuration"]

log = logging.getLogger("keras_memguard")

ALLOCATORS = {
    "cuda_malloc_async": "cudaMallocAsync",
    "cudaMallocAsync": "cudaMallocAsync",
    "native": "native",
}


class TorchDevices:
    """The ``torch.cuda`` calls that ``configure_gpus`` makes, in one narrow adapter.

    ``device_count()`` does not initialise CUDA (torch asks NVML first);
    ``total()``, ``get_fraction()`` and ``set_fraction()`` do, on the device they touch.
    """

    def _cuda(self) -> Any:
        import torch

        return torch.cuda

    is_initialized = staticmethod(is_initialized)

    def device_count(self) -> int:
        return int(self._cuda().device_count())

    def gpu_name(self, index: int) -> str:
        return str(self._cuda().get_device_name(index))

    def total(self, index: int) -> int:
        return int(self._cuda().get_device_properties(index).total_memory)

    def get_fraction(self, index: int) -> float:
        return float(self._cuda().get_per_process_memory_fraction(index))

    def set_fraction(self, fraction: float, index: int) -> None:
        self._cuda().set_per_process_memory_fraction(float(fraction), index)


def configure(request: GpuRequest, devices: Any = None) -> GpuConfigReport:
    """Applies ``request`` through ``torch.cuda`` (a fake ``devices`` in tests)."""
    request.check_one_logical_device("PyTorch")
    limits, memory_limit = request.limits, request.memory_limit
    memory_growth, visible_gpus, allocator = (
        request.memory_growth,
        request.visible_gpus,
        request.allocator,
    )
    if memory_growth is False:
        raise invalid_argument(
            "memory_growth",
            memory_growth,
            "True or None under PyTorch",
            "PyTorch's caching allocator always grows on demand",
        )
    request.check_allocator(ALLOCATORS)
    devices = devices or TorchDevices()
    initialized = devices.is_initialized()
    count = devices.device_count()
    request.check_indices(count)
    wanted: dict[str, str] = {}
    if allocator is not None:
        variable = conf_variable()
        wanted[variable] = with_alloc_backend(os.environ.get(variable, ""), ALLOCATORS[allocator])
    if visible_gpus is not None:
        wanted["CUDA_VISIBLE_DEVICES"] = visible_devices(list(visible_gpus))
    changes = apply_environment(wanted, initialized, "PyTorch")
    if count == 0:
        message = "configure_gpus: PyTorch sees no GPU; nothing to configure."
        if changes:
            message += " Set " + ", ".join(f"{k}={v}" for k, v in changes.items()) + "."
        log.info(message)
        return GpuConfigReport(
            changed=bool(changes),
            initialized=initialized,
            message=message,
            backend="torch",
            environment=environment("torch"),
        )
    settings = []
    limited = 0
    hidden = tuple(i for i in range(count) if visible_gpus is not None and i not in visible_gpus)
    if visible_gpus is not None and not initialized:
        count = len(visible_gpus)  # the devices torch will see
    for index in range(count):
        size = limits.get(index) if isinstance(limits, dict) else limits
        limit = None
        if size is not None:
            total = devices.total(index)  # creates this GPU's CUDA context
            limit = size.resolve(total)
            if limit is None or limit > total:
                raise invalid_argument(
                    "memory_limit",
                    memory_limit,
                    LIMIT_FORMS,
                    f"GPU {index} has only {format_bytes(total)}",
                )
            fraction = limit / total
            if abs(devices.get_fraction(index) - fraction) > 1e-6:
                devices.set_fraction(fraction, index)
                limited += 1
            settings.append(
                GpuSetting(index, devices.gpu_name(index), total, limit, True, framework="torch")
            )
    changed = bool(changes) or limited > 0
    parts = []
    if limited:
        parts.append(f"per-process memory fraction on {limited} GPU(s)")
    if changes:
        parts.append(", ".join(f"{k}={v}" for k, v in changes.items()))
    if memory_growth:
        parts.append("memory growth is PyTorch's default")
    message = (
        "configure_gpus: PyTorch: " + "; ".join(parts)
        if changed
        else "configure_gpus: already in force; nothing changed."
    )
    log.info(message)
    return GpuConfigReport(
        gpus=tuple(settings),
        changed=changed,
        initialized=initialized,
        allocator=os.environ.get(conf_variable()),
        message=message,
        hidden=hidden,
        backend="torch",
        environment=environment("torch"),
    )


def current_configuration(devices: Any = None) -> dict[str, Any]:
    """The allocator's environment and, once torch has initialised CUDA, each GPU's figures."""
    return adapter_configuration("torch")


def conf_variable() -> str:
    """The allocator variable to write: the one already set, else torch's current name."""
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        if os.environ.get(name):
            return name
    if package_reads("torch", os.path.join("cuda", "memory.py"), "PYTORCH_ALLOC_CONF"):
        return "PYTORCH_ALLOC_CONF"
    return "PYTORCH_CUDA_ALLOC_CONF"


def with_alloc_backend(conf: str, backend: str) -> str:
    """``conf`` (``key:value,...``) with its ``backend:`` entry set to ``backend``."""
    entries = [e for e in conf.split(",") if e.strip() and not e.strip().startswith("backend:")]
    return ",".join([*entries, f"backend:{backend}"])
