"""JAX's part of ``configure_gpus``: the environment JAX reads when it creates its GPU backend.

JAX has no configuration calls: it reads ``XLA_PYTHON_CLIENT_PREALLOCATE``,
``XLA_CLIENT_MEM_FRACTION`` (or its older name ``XLA_PYTHON_CLIENT_MEM_FRACTION``),
``XLA_PYTHON_CLIENT_ALLOCATOR`` and ``CUDA_VISIBLE_DEVICES`` once, when it creates its
GPU backend. So this sets them before that, refuses a change after, and has one
fraction for every GPU (JAX has no per-GPU limit).

Example:
    >>> configure(GpuRequest(0.5, None, None, 1, None)).environment
    {'XLA_CLIENT_MEM_FRACTION': '0.5'}
"""

from __future__ import annotations

import importlib.metadata
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
from keras_memguard.backends.jax.memory import gpu_backend, is_initialized
from keras_memguard.errors import invalid_argument
from keras_memguard.probes import nvml
from keras_memguard.sizes import Size, format_bytes

__all__ = ["ALLOCATORS", "configure", "current_configuration", "has_gpu_plugin"]

log = logging.getLogger("keras_memguard")

ALLOCATORS = {
    "cuda_malloc_async": "cuda_async",
    "cuda_async": "cuda_async",
    "platform": "platform",
    "bfc": "bfc",
    "vmm": "vmm",
    "default": "default",
}


def configure(request: GpuRequest, devices: Any = None) -> GpuConfigReport:
    """Sets JAX's GPU environment for ``request``; ``devices`` is unused (no adapter)."""
    request.check_one_logical_device("JAX")
    request.check_allocator(ALLOCATORS)
    limits, memory_limit = request.limits, request.memory_limit
    memory_growth, visible_gpus, allocator = (
        request.memory_growth,
        request.visible_gpus,
        request.allocator,
    )
    found = nvml.visible_devices()
    count = len(found) if found is not None else None
    totals = [d.total for d in found] if found else []
    initialized = is_initialized()
    no_gpu = ""
    if initialized and gpu_backend() is None:
        no_gpu = "JAX has already initialized its backends without a GPU"
    elif not initialized and found == []:
        no_gpu = "NVML sees no GPU here"
    elif not initialized and found is None and not has_gpu_plugin():
        no_gpu = "no JAX GPU plugin (jax[cuda12] or jax[cuda13]) is installed"
    if no_gpu:
        message = f"configure_gpus: {no_gpu}; JAX runs on the CPU, nothing to configure."
        log.info(message)
        return GpuConfigReport(
            initialized=initialized, message=message, backend="jax", environment=environment("jax")
        )
    wanted: dict[str, str] = {}
    if limits is not None:
        fraction = _jax_fraction(limits, memory_limit, count, totals)
        wanted[_jax_fraction_variable()] = f"{fraction:.6g}"
    if memory_growth is not None:
        wanted["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false" if memory_growth else "true"
    if allocator is not None:
        wanted["XLA_PYTHON_CLIENT_ALLOCATOR"] = ALLOCATORS[allocator]
    if visible_gpus is not None:
        request.check_indices(count, limits=False)
        wanted["CUDA_VISIBLE_DEVICES"] = visible_devices(list(visible_gpus))
    changes = apply_environment(wanted, initialized, "JAX")
    growth = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "").lower() in ("false", "0")
    fraction_now = os.environ.get("XLA_CLIENT_MEM_FRACTION") or os.environ.get(
        "XLA_PYTHON_CLIENT_MEM_FRACTION"
    )
    gpus = tuple(
        GpuSetting(
            index=d.index,
            name=d.name,
            total=d.total,
            memory_limit=int(float(fraction_now) * d.total) if fraction_now else None,
            memory_growth=growth,
            framework="jax",
        )
        for d in found or []
    )
    if changes:
        set_text = ", ".join(f"{k}={v}" for k, v in changes.items())
        message = f"configure_gpus: JAX will read {set_text} when it creates its GPU backend"
    else:
        message = "configure_gpus: already in force; nothing changed."
    log.info(message)
    return GpuConfigReport(
        gpus=gpus,
        changed=bool(changes),
        initialized=initialized,
        allocator=os.environ.get("XLA_PYTHON_CLIENT_ALLOCATOR"),
        message=message,
        hidden=tuple(
            i for i in range(count or 0) if visible_gpus is not None and i not in visible_gpus
        ),
        backend="jax",
        environment=environment("jax"),
    )


def has_gpu_plugin() -> bool:
    """Whether a JAX CUDA or ROCm plugin is installed (read from package metadata)."""
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith(("jax-cuda", "jax-rocm", "jaxlib-cuda")):
            return True
    return False


def _jax_fraction(
    limits: Size | dict[int, Size], memory_limit: Any, count: int | None, totals: list[int]
) -> float:
    """One fraction for every GPU (JAX has no per-GPU limit)."""
    if isinstance(limits, dict):
        if count is None or set(limits) != set(range(count)):
            raise invalid_argument(
                "memory_limit",
                memory_limit,
                "one limit for all GPUs under JAX",
                "JAX applies one memory fraction to every GPU",
            )
        sizes = list(limits.values())
    else:
        sizes = [limits] * max(1, count or 1)
    fractions = set()
    for index, size in enumerate(sizes):
        if size.fraction is not None:
            fractions.add(round(size.fraction, 6))
            continue
        if not totals:
            raise invalid_argument(
                "memory_limit",
                memory_limit,
                "a fraction such as 0.5 or '50%' under JAX, or bytes with NVML installed",
                "JAX takes a fraction of each GPU; converting bytes needs the GPUs' totals "
                f"from NVML ({nvml.INSTALL_HINT})",
            )
        total = totals[index]
        if size.bytes is None or size.bytes > total:
            raise invalid_argument(
                "memory_limit",
                memory_limit,
                LIMIT_FORMS,
                f"GPU {index} has only {format_bytes(total)}",
            )
        fractions.add(round(size.bytes / total, 6))
    if len(fractions) != 1:
        raise invalid_argument(
            "memory_limit",
            memory_limit,
            "one fraction for all GPUs under JAX",
            "these GPUs would need different fractions, and JAX has one for all",
        )
    return fractions.pop()


def current_configuration(devices: Any = None) -> dict[str, Any]:
    """JAX's GPU environment and, once it has a GPU backend, each device's figures."""
    return adapter_configuration("jax")


def _jax_fraction_variable() -> str:
    """The fraction variable to write: the one already set, else the one jaxlib reads.

    JAX refuses both at once; ``XLA_CLIENT_MEM_FRACTION`` replaced
    ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (still read, deprecated) in recent jaxlib.
    """
    for name in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION"):
        if os.environ.get(name):
            return name
    if package_reads("jaxlib", "xla_client.py", "XLA_CLIENT_MEM_FRACTION"):
        return "XLA_CLIENT_MEM_FRACTION"
    return "XLA_PYTHON_CLIENT_MEM_FRACTION"
