"""One reading of every memory figure keras-memguard knows, in one frozen dataclass.

``snapshot()`` reads this process tree, the machine, the container (cgroup), the GPUs
(NVML) and the Keras backend's GPU allocator (through
:func:`keras_memguard.backends.current_backend`). A figure that does not apply here, or
cannot be read, is ``None``. ``MemorySnapshot.metrics()`` flattens it into
``{name: value}`` with the units in the names (MiB, percent, seconds): these names are
what the TensorBoard tags and the Keras ``logs`` keys are made of (docs/metrics.md).

The *effective limit* is ``min(machine total, container limit)``: a fraction such as
``"80%"`` anywhere in the package means 80% of it.

Example:
    >>> snap = snapshot()
    >>> snap.effective_available <= snap.effective_limit
    True
    >>> snap.metrics()["process_tree_mib"]
    412.5
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from keras_memguard.backends.base import DeviceMemory, current_backend
from keras_memguard.errors import warn_once
from keras_memguard.probes import nvml
from keras_memguard.probes.cgroup import read_container_memory
from keras_memguard.probes.process import read_process_memory
from keras_memguard.probes.system import read_system_memory

__all__ = ["GpuSnapshot", "MemorySnapshot", "reset_gpu_peaks", "snapshot", "to_mib"]

MIB = 2**20


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU's figures in bytes; ``index`` is the framework's (CUDA order, ``/GPU:i``).

    From NVML (whole device or this process as the driver sees it): ``total``,
    ``device_used`` (every process), ``process_used`` (this process). From the Keras
    backend's allocator (``None`` until the framework has set up its GPUs):
    ``allocated`` (live arrays now), ``allocated_peak`` (the allocator's peak since its
    last reset, or since start where ``peak_resettable`` is False), ``reserved`` (the
    framework's pool, where reported).
    """

    index: int
    name: str | None = None
    uuid: str | None = None
    total: int | None = None
    device_used: int | None = None
    process_used: int | None = None
    allocated: int | None = None
    allocated_peak: int | None = None
    reserved: int | None = None
    peak_resettable: bool | None = None
    limit: int | None = None  # the framework's own cap on its pool, where it has one

    @property
    def guarded(self) -> tuple[str, int] | None:
        """What ``max_gpu_memory`` is compared with, as (figure name, bytes).

        The allocator's peak (what runs a GPU out happens inside a step), else its live
        bytes, else this process's NVML figure, else the whole device's.
        """
        for name, value in (
            ("allocated_peak", self.allocated_peak),
            ("allocated", self.allocated),
            ("process", self.process_used),
            ("device_used", self.device_used),
        ):
            if value is not None:
                return name, value
        return None


@dataclass(frozen=True)
class MemorySnapshot:
    """Every memory figure at one moment, in bytes (``None`` where not applicable).

    ``process_tree`` is this process's RSS plus its descendants' private memory
    (``process_children``, read ``process_children_age_s`` seconds ago): pages forked
    workers share with this process are counted once, as the kernel charges them.
    """

    timestamp: float
    process_rss: int | None = None
    process_tree: int | None = None
    process_peak_rss: int | None = None
    child_processes: int | None = None
    process_children: int | None = None
    process_children_age_s: float | None = None
    system_total: int | None = None
    system_available: int | None = None
    system_used_percent: float | None = None
    swap_used: int | None = None
    container_limit: int | None = None
    container_usage: int | None = None
    container_working_set: int | None = None
    container_own_usage: int | None = None
    container_oom_kills: int | None = None
    gpus: tuple[GpuSnapshot, ...] = ()

    @property
    def process_tree_rss(self) -> int | None:
        """Deprecated name of :attr:`process_tree`."""
        return self.process_tree

    @property
    def effective_limit(self) -> int | None:
        """``min(system total, container limit)``: what "80%" is 80% of."""
        limits = [v for v in (self.system_total, self.container_limit) if v is not None]
        return min(limits) if limits else None

    @property
    def effective_available(self) -> int | None:
        """What can still be allocated before the machine or the container runs out."""
        candidates = []
        if self.system_available is not None:
            candidates.append(self.system_available)
        if self.container_limit is not None and self.container_working_set is not None:
            candidates.append(max(0, self.container_limit - self.container_working_set))
        return min(candidates) if candidates else None

    def metrics(self) -> dict[str, float]:
        """A flat ``{name: value}`` view in MiB, percent and s, without the ``None`` figures."""
        values: dict[str, float | int | None] = {
            "process_rss_mib": to_mib(self.process_rss),
            "process_tree_mib": to_mib(self.process_tree),
            "process_children_mib": to_mib(self.process_children),
            "process_children_age_s": _round(self.process_children_age_s),
            "process_rss_peak_mib": to_mib(self.process_peak_rss),
            "system_available_mib": to_mib(self.system_available),
            "system_used_percent": self.system_used_percent,
            "swap_used_mib": to_mib(self.swap_used),
            "container_usage_mib": to_mib(self.container_usage),
            "container_working_set_mib": to_mib(self.container_working_set),
            "container_own_usage_mib": to_mib(self.container_own_usage),
            "container_limit_mib": to_mib(self.container_limit),
            "container_oom_kills": self.container_oom_kills,
            "effective_limit_mib": to_mib(self.effective_limit),
            "effective_available_mib": to_mib(self.effective_available),
        }
        for gpu in self.gpus:
            prefix = f"gpu{gpu.index}_"
            values[prefix + "device_used_mib"] = to_mib(gpu.device_used)
            values[prefix + "device_total_mib"] = to_mib(gpu.total)
            values[prefix + "process_mib"] = to_mib(gpu.process_used)
            values[prefix + "allocated_mib"] = to_mib(gpu.allocated)
            values[prefix + "allocated_peak_mib"] = to_mib(gpu.allocated_peak)
            values[prefix + "reserved_mib"] = to_mib(gpu.reserved)
        return {k: float(v) for k, v in values.items() if v is not None}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def to_mib(value: int | None) -> float | None:
    """Bytes as MiB rounded to 3 places, the unit of every logged key; ``None`` stays."""
    return None if value is None else round(value / MIB, 3)


def _device_memory() -> list[DeviceMemory] | None:
    try:
        return current_backend().device_memory()
    except Exception as err:  # an adapter's failure must never reach training
        warn_once("backend-device-memory", f"keras-memguard cannot read GPU allocator: {err}")
        return None


def reset_gpu_peaks() -> bool:
    """Resets the backend's allocator peaks where it allows; returns whether it did.

    This also resets them for the user's own code (TensorFlow's
    ``get_memory_info()["peak"]``, PyTorch's ``max_memory_allocated()``).
    """
    try:
        return bool(current_backend().reset_peaks())
    except Exception as err:
        warn_once("backend-reset-peaks", f"keras-memguard cannot reset GPU peaks: {err}")
        return False


def _gpus() -> tuple[GpuSnapshot, ...]:
    """NVML's and the allocator's figures, joined by UUID where both know it, else by index."""
    devices = nvml.read_gpu_memory() or []
    allocators = _device_memory() or []
    physical = [
        GpuSnapshot(
            index=gpu.index,
            name=gpu.name,
            uuid=gpu.uuid,
            total=gpu.total,
            device_used=gpu.used,
            process_used=gpu.process_used,
        )
        for gpu in devices
    ]
    by_uuid = {gpu.uuid: gpu for gpu in physical if gpu.uuid}
    if physical and not any(a.uuid for a in allocators) and not nvml.order_is_certain():
        warn_once(
            "nvml-order",
            "keras-memguard: this machine mixes GPU models and CUDA_DEVICE_ORDER is not "
            "PCI_BUS_ID, so NVML's device order may differ from CUDA's and per-GPU figures "
            "may be misplaced. Set CUDA_DEVICE_ORDER=PCI_BUS_ID (or list GPU UUIDs in "
            "CUDA_VISIBLE_DEVICES).",
        )
    by_index = {gpu.index: gpu for gpu in physical}
    # Without UUIDs, allocator figures line up with NVML's only when each physical GPU
    # holds one logical device (or NVML is absent).
    index_aligned = not physical or len(allocators) == len(physical)
    result: dict[int, GpuSnapshot] = {}
    used: set[int] = set()
    for alloc in allocators:
        base = by_uuid.get(alloc.uuid) if alloc.uuid else None
        if base is None and index_aligned:
            base = by_index.get(alloc.index)
        if base is None and physical:
            continue  # a logical device NVML cannot place
        if base is not None:
            used.add(base.index)
        base = base or GpuSnapshot(index=alloc.index, uuid=alloc.uuid, total=alloc.limit)
        result[alloc.index] = replace(
            base,
            index=alloc.index,
            allocated=alloc.allocated,
            allocated_peak=alloc.peak,
            reserved=alloc.reserved,
            peak_resettable=alloc.peak_resettable,
            limit=alloc.limit,
        )
    for gpu in physical:
        if gpu.index not in used and gpu.index not in result:
            result[gpu.index] = gpu
    return tuple(result[i] for i in sorted(result))


def snapshot(*, gpus: bool = True) -> MemorySnapshot:
    """Reads every memory figure now; never raises and never initializes a framework.

    Args:
        gpus: whether to read NVML and the backend's allocator. Defaults to `True`.

    Example:
        >>> snapshot(gpus=False).process_rss > 0
        True
    """
    process = read_process_memory()
    system = read_system_memory()
    container = read_container_memory()
    return MemorySnapshot(
        timestamp=time.time(),
        process_rss=process.rss if process else None,
        process_tree=process.tree if process else None,
        process_peak_rss=process.peak_rss if process else None,
        child_processes=process.children if process else None,
        process_children=process.children_private if process else None,
        process_children_age_s=process.children_age_s if process else None,
        system_total=system.total if system else None,
        system_available=system.available if system else None,
        system_used_percent=system.used_percent if system else None,
        swap_used=system.swap_used if system else None,
        container_limit=container.limit if container else None,
        container_usage=container.usage if container else None,
        container_working_set=container.working_set if container else None,
        container_own_usage=container.leaf_usage if container else None,
        container_oom_kills=container.oom_kills if container else None,
        gpus=_gpus() if gpus else (),
    )
