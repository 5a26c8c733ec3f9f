"""TensorFlow's part of ``configure_gpus``: logical devices, memory growth, visibility.

TensorFlow fixes its GPU settings when it initializes its devices (its first op), so
everything here is applied before that, through ``tf.config``: logical device
configurations (a hard limit per GPU, or several logical GPUs on one), memory growth,
visible devices, and ``TF_GPU_ALLOCATOR``. All ``tf.config`` calls go through
:class:`TensorFlowDevices`, so tests stand in a fake.

Example:
    >>> configure(GpuRequest("4GiB", None, None, 1, None), devices=None)
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from keras_memguard.backends.configure import (
    LIMIT_FORMS,
    MIB,
    GpuConfigError,
    GpuConfigReport,
    GpuRequest,
    GpuSetting,
    Limits,
    environment,
)
from keras_memguard.backends.tensorflow.memory import is_initialized
from keras_memguard.errors import invalid_argument
from keras_memguard.probes import nvml
from keras_memguard.sizes import format_bytes

__all__ = ["ALLOCATORS", "TensorFlowDevices", "configure", "current_configuration"]

log = logging.getLogger("keras_memguard")

ALLOCATORS = ("cuda_malloc_async",)


class TensorFlowDevices:
    """The ``tf.config`` calls that ``configure_gpus`` makes, in one narrow adapter."""

    is_initialized = staticmethod(is_initialized)

    def physical_gpus(self) -> list[Any]:
        import tensorflow as tf

        return list(tf.config.list_physical_devices("GPU"))

    def get_visible_gpus(self) -> list[Any]:
        import tensorflow as tf

        return list(tf.config.get_visible_devices("GPU"))

    def set_visible_gpus(self, devices: list[Any]) -> None:
        import tensorflow as tf

        tf.config.set_visible_devices(devices, "GPU")

    def get_memory_growth(self, device: Any) -> bool:
        import tensorflow as tf

        return bool(tf.config.experimental.get_memory_growth(device))

    def set_memory_growth(self, device: Any, enable: bool) -> None:
        import tensorflow as tf

        tf.config.experimental.set_memory_growth(device, enable)

    def get_memory_limits(self, device: Any) -> list[int] | None:
        """The logical devices' limits in MiB set on ``device``, or ``None``."""
        import tensorflow as tf

        configs = tf.config.get_logical_device_configuration(device)
        if not configs:
            return None
        return [int(c.memory_limit) if c.memory_limit is not None else -1 for c in configs]

    def set_memory_limits(self, device: Any, limits_mib: list[int]) -> None:
        import tensorflow as tf

        tf.config.set_logical_device_configuration(
            device, [tf.config.LogicalDeviceConfiguration(memory_limit=m) for m in limits_mib]
        )

    def gpu_name(self, device: Any) -> str:
        import tensorflow as tf

        try:
            details = tf.config.experimental.get_device_details(device)
        except (ValueError, RuntimeError):
            details = {}
        return str(details.get("device_name") or device.name)


def configure(request: GpuRequest, devices: TensorFlowDevices | None = None) -> GpuConfigReport:
    """Applies ``request`` through ``tf.config`` before TensorFlow initializes its GPUs."""
    limits, memory_limit, memory_growth = (
        request.limits,
        request.memory_limit,
        request.memory_growth,
    )
    visible_gpus, logical_devices_per_gpu = request.visible_gpus, request.logical_devices_per_gpu
    request.check_allocator(ALLOCATORS)
    if limits is not None and memory_growth:
        raise invalid_argument(
            "memory_growth",
            memory_growth,
            "memory_growth=None/False when memory_limit is given",
            "a hard limit and memory growth exclude each other",
        )
    devices = devices or TensorFlowDevices()
    initialized = devices.is_initialized()
    physical = devices.physical_gpus()
    allocator_now = _apply_allocator(request.allocator, initialized)
    request.check_indices(len(physical))

    if not physical:
        message = "configure_gpus: TensorFlow sees no GPU; nothing to configure."
        log.info(message)
        return GpuConfigReport(
            initialized=initialized,
            allocator=allocator_now,
            message=message,
            environment=environment("tensorflow"),
        )

    totals: list[int | None] = [None] * len(physical)
    if _needs_totals(limits):
        nvml_totals = _nvml_totals(memory_limit)
        totals = [nvml_totals[i] if i < len(nvml_totals) else None for i in range(len(physical))]
    else:
        found = nvml.visible_devices() or []
        totals = [found[i].total if i < len(found) else None for i in range(len(physical))]
    names = [devices.gpu_name(device) for device in physical]
    wanted = _requested(
        len(physical), names, totals, limits, memory_growth, logical_devices_per_gpu
    )
    hidden = tuple(
        i for i in range(len(physical)) if visible_gpus is not None and i not in visible_gpus
    )
    current = _current(devices, physical, names, totals)
    touches_growth = memory_growth is not None

    def differs(want: GpuSetting, have: GpuSetting) -> bool:
        if (
            limits is not None
            and want.memory_limit is not None
            and (
                want.memory_limit // MIB != (have.memory_limit or 0) // MIB
                or want.logical_devices != have.logical_devices
            )
        ):
            return True
        return touches_growth and limits is None and want.memory_growth != have.memory_growth

    changes = [w for w, h in zip(wanted, current, strict=True) if differs(w, h)]
    visibility_changes = bool(hidden) and set(hidden) != _hidden_now(devices, physical)

    if not changes and not visibility_changes:
        message = "configure_gpus: already in force; nothing changed."
        log.info(message)
        return GpuConfigReport(
            tuple(current),
            False,
            initialized,
            allocator_now,
            message,
            hidden,
            environment=environment("tensorflow"),
        )
    if initialized:
        applied = "; ".join(f"GPU {h.index}: {h.describe()}" for h in current)
        raise GpuConfigError(
            "TensorFlow has already initialized its GPUs, so their memory settings can no "
            f"longer change. In force: {applied}. Call keras_memguard.configure_gpus(...) "
            "first in your program, before building models or running any TensorFlow op."
        )
    for want in changes:
        device = physical[want.index]
        if want.memory_limit is not None:
            devices.set_memory_limits(device, [want.memory_limit // MIB] * want.logical_devices)
        elif touches_growth:
            devices.set_memory_growth(device, bool(memory_growth))
    if visible_gpus is not None:
        devices.set_visible_gpus([physical[i] for i in visible_gpus])
    final = _current(devices, physical, names, totals) if changes else current
    message = f"configure_gpus: configured {len(physical)} GPU(s)"
    log.info("%s\n%s", message, "\n".join(f"  GPU {g.index}: {g.describe()}" for g in final))
    return GpuConfigReport(
        tuple(final),
        True,
        False,
        allocator_now,
        message,
        hidden,
        environment=environment("tensorflow"),
    )


def _hidden_now(devices: TensorFlowDevices, physical: list[Any]) -> set[int]:
    visible = {d.name for d in devices.get_visible_gpus()}
    return {i for i, d in enumerate(physical) if d.name not in visible}


def _apply_allocator(allocator: str | None, initialized: bool) -> str | None:
    now = os.environ.get("TF_GPU_ALLOCATOR")
    if allocator is None or allocator == now:
        return now
    if initialized:
        raise GpuConfigError(
            f"TF_GPU_ALLOCATOR={allocator!r} takes effect only before TensorFlow initializes "
            f"its GPUs, and it already has (TF_GPU_ALLOCATOR={now!r} was in force). Call "
            "configure_gpus first in your program, or set the variable before starting Python."
        )
    os.environ["TF_GPU_ALLOCATOR"] = allocator
    return allocator


def _needs_totals(limits: Limits) -> bool:
    if limits is None:
        return False
    values = limits.values() if isinstance(limits, dict) else [limits]
    return any(v.fraction is not None for v in values)


def _nvml_totals(memory_limit: Any) -> list[int]:
    try:
        import pynvml  # noqa: F401  (only to tell "not installed" from "no driver")
    except ImportError:
        raise ValueError(
            f"Invalid value for argument `memory_limit`. Received: memory_limit="
            f"{memory_limit!r}. A fraction of each GPU's memory needs NVML to read the totals: "
            f"{nvml.INSTALL_HINT}; or give the limit in bytes ('5GiB')."
        ) from None
    devices = nvml.visible_devices()
    if devices is None:
        raise ValueError(
            f"Invalid value for argument `memory_limit`. Received: memory_limit="
            f"{memory_limit!r}. NVML cannot read the GPUs' totals here (see the warning above); "
            "give the limit in bytes ('5GiB')."
        )
    return [d.total for d in devices]


def _requested(
    gpu_count: int,
    names: list[str],
    totals: list[int | None],
    limits: Limits,
    memory_growth: bool | None,
    logical_devices: int,
) -> list[GpuSetting]:
    settings = []
    for index in range(gpu_count):
        size = limits.get(index) if isinstance(limits, dict) else limits
        limit = size.resolve(totals[index]) if size is not None else None
        if size is not None and limit is None:
            raise invalid_argument(
                "memory_limit", str(size), LIMIT_FORMS, f"the total of GPU {index} is unknown"
            )
        if (
            limit is not None
            and totals[index] is not None
            and limit * logical_devices > (totals[index] or 0)
        ):
            raise invalid_argument(
                "memory_limit",
                format_bytes(limit),
                LIMIT_FORMS,
                f"GPU {index} has only {format_bytes(totals[index])}",
            )
        settings.append(
            GpuSetting(
                index=index,
                name=names[index],
                total=totals[index],
                memory_limit=limit,
                memory_growth=bool(memory_growth) and limit is None,
                logical_devices=logical_devices if limit is not None else 1,
            )
        )
    return settings


def _current(
    devices: TensorFlowDevices, gpus: list[Any], names: list[str], totals: list[int | None]
) -> list[GpuSetting]:
    current = []
    for index, device in enumerate(gpus):
        limits = devices.get_memory_limits(device)
        current.append(
            GpuSetting(
                index=index,
                name=names[index],
                total=totals[index],
                memory_limit=limits[0] * MIB if limits and limits[0] >= 0 else None,
                memory_growth=devices.get_memory_growth(device),
                logical_devices=len(limits) if limits else 1,
            )
        )
    return current


def current_configuration(devices: TensorFlowDevices | None = None) -> dict[str, Any]:
    """TensorFlow's GPU settings as plain data; nothing about devices before it is imported."""
    state: dict[str, Any] = {
        "backend": "tensorflow",
        "tensorflow_loaded": "tensorflow" in sys.modules,
        "initialized": False,
        "allow_growth_env": os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH"),
        "allocator_env": os.environ.get("TF_GPU_ALLOCATOR"),
        "gpus": [],
    }
    if not state["tensorflow_loaded"]:
        return state
    devices = devices or TensorFlowDevices()
    state["initialized"] = devices.is_initialized()
    try:
        physical = devices.physical_gpus()
        names = [d.name for d in physical]
        for setting in _current(devices, physical, names, [None] * len(physical)):
            state["gpus"].append(
                {
                    "device": names[setting.index],
                    "setting": setting.describe(),
                    "memory_limit": setting.memory_limit,
                    "memory_growth": setting.memory_growth,
                    "logical_devices": setting.logical_devices,
                }
            )
    except (RuntimeError, ValueError) as err:
        state["error"] = str(err)
    return state
