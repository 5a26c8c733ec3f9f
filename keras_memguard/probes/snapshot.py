"""One reading of every memory figure keras-memguard knows, in one frozen dataclass.

``snapshot()`` reads this process tree, the machine, the container (cgroup), the GPUs
(NVML) and TensorFlow's GPU allocator. A figure that does not apply here, or cannot
be read, is ``None``. ``MemorySnapshot.metrics()`` flattens it into ``{name: value}``
with the units in the names (MiB, percent): these names are what the TensorBoard tags
and the Keras ``logs`` keys are made of (see docs/metrics.md for the table).

The *effective limit* is ``min(machine total, container limit)``: a fraction such as
``"80%"`` anywhere in the package means 80% of it.

Example:
    >>> snap = snapshot()
    >>> snap.effective_available <= snap.effective_limit
    True
    >>> snap.metrics()["process_tree_rss_mib"]
    412.5
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from keras_memguard.backends import tensorflow as tf_devices
from keras_memguard.probes import nvml
from keras_memguard.probes.cgroup import read_container_memory
from keras_memguard.probes.process import read_process_memory
from keras_memguard.probes.system import read_system_memory

__all__ = ["GpuSnapshot", "MemorySnapshot", "snapshot"]

MIB = 2**20


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU's figures in bytes; ``index`` is TensorFlow's ``/GPU:<index>``.

    ``used``/``total``/``process_used`` come from NVML; ``tf_current``/``tf_peak`` from
    TensorFlow's allocator (``None`` before TensorFlow initializes its GPUs).
    """

    index: int
    name: str | None = None
    total: int | None = None
    used: int | None = None
    process_used: int | None = None
    tf_current: int | None = None
    tf_peak: int | None = None

    @property
    def untracked(self) -> int | None:
        """Bytes this process holds beyond TensorFlow's live tensors (pool, CUDA context)."""
        held = self.process_used
        if held is None or self.tf_current is None:
            return None
        return max(0, held - self.tf_current)

    @property
    def guarded_usage(self) -> int | None:
        """What ``max_gpu_memory`` is compared with: TensorFlow's live bytes if known,
        else this process's NVML figure, else the device's used memory."""
        for value in (self.tf_current, self.process_used, self.used):
            if value is not None:
                return value
        return None


@dataclass(frozen=True)
class MemorySnapshot:
    """Every memory figure at one moment, in bytes (``None`` where not applicable)."""

    timestamp: float
    process_rss: int | None = None
    process_tree_rss: int | None = None
    process_peak_rss: int | None = None
    child_processes: int | None = None
    system_total: int | None = None
    system_available: int | None = None
    system_used_percent: float | None = None
    swap_used: int | None = None
    container_limit: int | None = None
    container_usage: int | None = None
    container_working_set: int | None = None
    container_oom_kills: int | None = None
    gpus: tuple[GpuSnapshot, ...] = ()

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
        """A flat ``{name: value}`` view in MiB and percent, without the ``None`` figures."""
        values: dict[str, float | int | None] = {
            "process_rss_mib": _mib(self.process_rss),
            "process_tree_rss_mib": _mib(self.process_tree_rss),
            "process_peak_rss_mib": _mib(self.process_peak_rss),
            "system_available_mib": _mib(self.system_available),
            "system_used_percent": self.system_used_percent,
            "swap_used_mib": _mib(self.swap_used),
            "container_usage_mib": _mib(self.container_usage),
            "container_working_set_mib": _mib(self.container_working_set),
            "container_limit_mib": _mib(self.container_limit),
            "container_oom_kills": self.container_oom_kills,
            "effective_limit_mib": _mib(self.effective_limit),
            "effective_available_mib": _mib(self.effective_available),
        }
        for gpu in self.gpus:
            prefix = f"gpu{gpu.index}_"
            values[prefix + "used_mib"] = _mib(gpu.used)
            values[prefix + "total_mib"] = _mib(gpu.total)
            values[prefix + "process_mib"] = _mib(gpu.process_used)
            values[prefix + "tf_current_mib"] = _mib(gpu.tf_current)
            values[prefix + "tf_peak_mib"] = _mib(gpu.tf_peak)
            values[prefix + "untracked_mib"] = _mib(gpu.untracked)
        return {k: float(v) for k, v in values.items() if v is not None}


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / MIB, 3)


def _gpus() -> tuple[GpuSnapshot, ...]:
    devices = nvml.read_gpu_memory()
    allocators = tf_devices.read_allocator_memory()
    by_index: dict[int, GpuSnapshot] = {}
    for gpu in devices or []:
        by_index[gpu.index] = GpuSnapshot(
            index=gpu.index,
            name=gpu.name,
            total=gpu.total,
            used=gpu.used,
            process_used=gpu.process_used,
        )
    # Allocator figures are per logical GPU; they line up with physical GPUs only when
    # each physical GPU holds one logical device (or NVML is absent).
    if allocators and (not by_index or len(allocators) == len(by_index)):
        for alloc in allocators:
            base = by_index.get(alloc.index, GpuSnapshot(index=alloc.index))
            by_index[alloc.index] = replace(base, tf_current=alloc.current, tf_peak=alloc.peak)
    return tuple(by_index[i] for i in sorted(by_index))


def snapshot(*, gpus: bool = True) -> MemorySnapshot:
    """Reads every memory figure now; never raises and never initializes TensorFlow.

    Args:
        gpus: whether to read NVML and TensorFlow's allocator. Defaults to `True`.

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
        process_tree_rss=process.tree_rss if process else None,
        process_peak_rss=process.peak_rss if process else None,
        child_processes=process.children if process else None,
        system_total=system.total if system else None,
        system_available=system.available if system else None,
        system_used_percent=system.used_percent if system else None,
        swap_used=system.swap_used if system else None,
        container_limit=container.limit if container else None,
        container_usage=container.usage if container else None,
        container_working_set=container.working_set if container else None,
        container_oom_kills=container.oom_kills if container else None,
        gpus=_gpus() if gpus else (),
    )
