"""``configure_gpus``: cap each GPU's memory before TensorFlow maps all of it.

TensorFlow maps nearly all of every visible GPU's memory the first time it runs an
op. Limits (logical device configurations) and memory growth can be set only before
that moment, so this is an explicit bootstrap, to be called first thing in a script:
never at import time, safe to call twice, and it reports what it did.

Users who cannot run code early can set ``TF_FORCE_GPU_ALLOW_GROWTH=true`` in the
environment instead (memory growth only) before Python starts.

Example:
    >>> import keras_memguard
    >>> report = keras_memguard.configure_gpus(memory_limit="6GiB")
    >>> print(report)
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keras_memguard.backends.tensorflow import TensorFlowDevices
from keras_memguard.errors import MemGuardError, invalid_argument, positive_int
from keras_memguard.probes import nvml
from keras_memguard.sizes import Size, format_bytes, parse_size

__all__ = [
    "GpuConfigError",
    "GpuConfigReport",
    "GpuSetting",
    "configure_gpus",
    "current_gpu_configuration",
]

log = logging.getLogger("keras_memguard")

MIB = 2**20
SizeLike = int | float | str
_ALLOCATORS = ("cuda_malloc_async",)


class GpuConfigError(MemGuardError, RuntimeError):
    """The requested GPU configuration cannot be applied any more."""


@dataclass(frozen=True)
class GpuSetting:
    """What applies to one physical GPU (TensorFlow's ``/GPU:<index>``)."""

    index: int
    name: str
    total: int | None
    memory_limit: int | None
    memory_growth: bool
    logical_devices: int = 1

    def describe(self) -> str:
        if self.memory_limit is not None:
            each = " each" if self.logical_devices > 1 else ""
            return f"limit {format_bytes(self.memory_limit)}{each} x{self.logical_devices}"
        if self.memory_growth:
            return "memory growth"
        return "TensorFlow default (maps nearly all memory)"


@dataclass(frozen=True)
class GpuConfigReport:
    """What ``configure_gpus`` found and did.

    Attributes:
        gpus: one :class:`GpuSetting` per visible GPU.
        changed: whether this call changed anything.
        initialized: whether TensorFlow had already initialized its GPUs.
        allocator: ``TF_GPU_ALLOCATOR`` as it stands after the call.
        message: a one-line summary (also logged).
    """

    gpus: tuple[GpuSetting, ...] = ()
    changed: bool = False
    initialized: bool = False
    allocator: str | None = None
    message: str = ""
    hidden: tuple[int, ...] = field(default=())

    def __str__(self) -> str:
        if not self.gpus:
            return self.message
        rows = [f"{'GPU':<5}{'name':<28}{'total':>12}  setting"]
        for gpu in self.gpus:
            total = format_bytes(gpu.total) if gpu.total is not None else "n/a"
            rows.append(f"{gpu.index:<5}{gpu.name[:27]:<28}{total:>12}  {gpu.describe()}")
        return "\n".join([self.message, *rows])


_LIMIT_FORMS = (
    "bytes as a positive int, a size string ('5GiB', '512MB'), a fraction of each GPU's "
    "total in (0, 1] (0.5 or '50%'), or a mapping from GPU index to any of those"
)


def _parse_limits(memory_limit: Any) -> Size | dict[int, Size] | None:
    if memory_limit is None:
        return None
    if isinstance(memory_limit, Mapping):
        limits = {}
        for key, value in memory_limit.items():
            if isinstance(key, bool) or not isinstance(key, int) or key < 0:
                raise invalid_argument(
                    "memory_limit",
                    memory_limit,
                    _LIMIT_FORMS,
                    f"GPU index {key!r} is not a non-negative int",
                )
            limits[key] = parse_size(value, name=f"memory_limit[{key}]")
        return limits
    return parse_size(memory_limit, name="memory_limit", forms=_LIMIT_FORMS)


def _needs_totals(limits: Size | dict[int, Size] | None) -> bool:
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
    limits: Size | dict[int, Size] | None,
    memory_growth: bool | None,
    logical_devices: int,
) -> list[GpuSetting]:
    settings = []
    for index in range(gpu_count):
        size = limits.get(index) if isinstance(limits, dict) else limits
        limit = size.resolve(totals[index]) if size is not None else None
        if size is not None and limit is None:
            raise invalid_argument(
                "memory_limit", str(size), _LIMIT_FORMS, f"the total of GPU {index} is unknown"
            )
        if (
            limit is not None
            and totals[index] is not None
            and limit * logical_devices > (totals[index] or 0)
        ):
            raise invalid_argument(
                "memory_limit",
                format_bytes(limit),
                _LIMIT_FORMS,
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


def configure_gpus(
    memory_limit: SizeLike | Mapping[int, SizeLike] | None = None,
    memory_growth: bool | None = None,
    *,
    visible_gpus: list[int] | None = None,
    logical_devices_per_gpu: int = 1,
    allocator: str | None = None,
    devices: TensorFlowDevices | None = None,
) -> GpuConfigReport:
    """Caps each GPU's memory; call it before building models or running any op.

    Args:
        memory_limit: a limit per GPU: bytes, `"5GiB"`, a fraction of each GPU's total
            (`0.5`, `"50%"`; needs `keras-memguard[gpu]`), or `{gpu_index: limit}` for
            some GPUs. Applied as logical device configurations. Defaults to `None`.
        memory_growth: `True` to let TensorFlow grow its use on demand on every visible
            GPU (TensorFlow refuses mixed settings). Cannot be combined with
            `memory_limit`. Defaults to `None` (left as it is).
        visible_gpus: indices of the GPUs TensorFlow may use; the others are hidden.
            Defaults to `None` (all).
        logical_devices_per_gpu: split each GPU into this many logical GPUs of
            `memory_limit` each (for testing multi-GPU code on one GPU). Defaults to `1`.
        allocator: `"cuda_malloc_async"` to set `TF_GPU_ALLOCATOR`, which TensorFlow reads
            only when it initializes. Defaults to `None` (left as it is).
        devices: the `tf.config` adapter; tests pass a fake. Defaults to the real one.

    Returns:
        A :class:`GpuConfigReport`; ``print(report)`` shows a table.

    Raises:
        ValueError: a bad argument (named in the message).
        GpuConfigError: TensorFlow already initialized its GPUs with another setting.

    Example:
        >>> configure_gpus(memory_growth=True)
        >>> configure_gpus(memory_limit={0: "10GiB", 1: 0.5})
    """
    if memory_growth not in (None, True, False):
        raise invalid_argument("memory_growth", memory_growth, "True, False or None")
    positive_int(logical_devices_per_gpu, "logical_devices_per_gpu")
    if allocator is not None and allocator not in _ALLOCATORS:
        raise invalid_argument("allocator", allocator, f"None or one of {_ALLOCATORS}")
    limits = _parse_limits(memory_limit)
    if limits is not None and memory_growth:
        raise invalid_argument(
            "memory_growth",
            memory_growth,
            "memory_growth=None/False when memory_limit is given",
            "a hard limit and memory growth exclude each other",
        )
    if logical_devices_per_gpu > 1 and limits is None:
        raise invalid_argument(
            "logical_devices_per_gpu",
            logical_devices_per_gpu,
            "1 unless memory_limit gives each logical GPU's size",
        )
    if visible_gpus is not None and (
        not isinstance(visible_gpus, (list, tuple))
        or any(isinstance(i, bool) or not isinstance(i, int) for i in visible_gpus)
    ):
        raise invalid_argument("visible_gpus", visible_gpus, "a list of GPU indices or None")

    devices = devices or TensorFlowDevices()
    initialized = devices.is_initialized()
    physical = devices.physical_gpus()
    allocator_now = _apply_allocator(allocator, initialized)

    if visible_gpus is not None:
        bad = [i for i in visible_gpus if not 0 <= i < len(physical)]
        if bad:
            raise invalid_argument(
                "visible_gpus",
                visible_gpus,
                f"indices in 0..{len(physical) - 1}",
                f"no GPU {bad[0]} among {len(physical)}",
            )
    if isinstance(limits, dict):
        bad = [i for i in limits if not 0 <= i < len(physical)]
        if bad:
            raise invalid_argument(
                "memory_limit",
                memory_limit,
                f"GPU indices in 0..{len(physical) - 1}"
                if physical
                else "no per-GPU mapping on a machine without GPUs",
                f"there is no GPU {bad[0]}",
            )

    if not physical:
        message = "configure_gpus: TensorFlow sees no GPU; nothing to configure."
        log.info(message)
        return GpuConfigReport(initialized=initialized, allocator=allocator_now, message=message)

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
        return GpuConfigReport(tuple(current), False, initialized, allocator_now, message, hidden)
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
    return GpuConfigReport(tuple(final), True, False, allocator_now, message, hidden)


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


def current_gpu_configuration(devices: TensorFlowDevices | None = None) -> dict[str, Any]:
    """TensorFlow's GPU state as plain data, read without initializing anything.

    Before TensorFlow is imported it reports nothing about devices (importing it just
    to look would cost seconds).
    """
    state: dict[str, Any] = {
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
