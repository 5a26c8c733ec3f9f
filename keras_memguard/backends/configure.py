"""``configure_gpus``: cap each GPU's memory before the framework takes it.

Every framework takes GPU memory at its first operation: TensorFlow maps nearly all of
every visible GPU, JAX preallocates 75%, PyTorch grows a caching pool on demand. Their
limits can be set only before that moment (PyTorch's memory fraction excepted), so this
is an explicit bootstrap, to be called first thing in a script: never at import time,
safe to call twice, and it reports what it did. It configures the Keras backend in use
(``KERAS_BACKEND``); see docs/backends.md for what it does on each.

This module holds what every framework shares: the public names, the validation of the
arguments, and the dispatch to ``backends/<framework>/configure.py``, which applies them.

Users who cannot run code early can set the environment instead before Python starts
(``TF_FORCE_GPU_ALLOW_GROWTH=true``, ``XLA_PYTHON_CLIENT_PREALLOCATE=false``, ...).

Example:
    >>> import keras_memguard
    >>> report = keras_memguard.configure_gpus(memory_limit="6GiB")
    >>> print(report)
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keras_memguard.backends.base import BACKENDS, backend_module, backend_name, current_backend
from keras_memguard.errors import MemGuardError, invalid_argument, positive_int
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
Limits = Size | dict[int, Size] | None

# The environment variables that govern each backend's GPU memory (shown in reports).
ENVIRONMENT = {
    "tensorflow": ("TF_FORCE_GPU_ALLOW_GROWTH", "TF_GPU_ALLOCATOR", "CUDA_VISIBLE_DEVICES"),
    "jax": (
        "XLA_PYTHON_CLIENT_PREALLOCATE",
        "XLA_CLIENT_MEM_FRACTION",
        "XLA_PYTHON_CLIENT_MEM_FRACTION",
        "XLA_PYTHON_CLIENT_ALLOCATOR",
        "CUDA_VISIBLE_DEVICES",
        "TF_FORCE_GPU_ALLOW_GROWTH",
    ),
    "torch": (
        "PYTORCH_ALLOC_CONF",
        "PYTORCH_CUDA_ALLOC_CONF",
        "CUDA_VISIBLE_DEVICES",
        "TF_FORCE_GPU_ALLOW_GROWTH",
    ),
}


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
    framework: str = "tensorflow"

    def describe(self) -> str:
        if self.framework == "jax":
            pool = "grows on demand" if self.memory_growth else "preallocated"
            if self.memory_limit is not None:
                return f"limit {format_bytes(self.memory_limit)}, {pool}"
            return f"JAX default limit (75% of total), {pool}"
        if self.framework == "torch":
            if self.memory_limit is not None:
                return f"limit {format_bytes(self.memory_limit)}, grows on demand"
            return "PyTorch default (no limit, grows on demand)"
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
        initialized: whether the framework had already initialized its GPUs.
        allocator: the allocator setting after the call (``TF_GPU_ALLOCATOR``,
            ``XLA_PYTHON_CLIENT_ALLOCATOR`` or the torch allocator backend).
        message: a one-line summary (also logged).
        hidden: GPU indices hidden from the framework.
        backend: the Keras backend configured (``tensorflow``, ``jax``, ``torch``).
        environment: the environment variables that govern this backend's GPU memory,
            as they stand after the call (set by this call, by the user, or by Keras:
            Keras sets ``TF_FORCE_GPU_ALLOW_GROWTH=true`` under JAX and PyTorch).
    """

    gpus: tuple[GpuSetting, ...] = ()
    changed: bool = False
    initialized: bool = False
    allocator: str | None = None
    message: str = ""
    hidden: tuple[int, ...] = field(default=())
    backend: str = "tensorflow"
    environment: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [self.message]
        if self.gpus:
            lines.append(f"{'GPU':<5}{'name':<28}{'total':>12}  setting")
            for gpu in self.gpus:
                total = format_bytes(gpu.total) if gpu.total is not None else "n/a"
                lines.append(f"{gpu.index:<5}{gpu.name[:27]:<28}{total:>12}  {gpu.describe()}")
        lines.extend(f"  {name}={value}" for name, value in sorted(self.environment.items()))
        return "\n".join(lines)


LIMIT_FORMS = (
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
                    LIMIT_FORMS,
                    f"GPU index {key!r} is not a non-negative int",
                )
            limits[key] = parse_size(value, name=f"memory_limit[{key}]")
        return limits
    return parse_size(memory_limit, name="memory_limit", forms=LIMIT_FORMS)


def configure_gpus(
    memory_limit: SizeLike | Mapping[int, SizeLike] | None = None,
    memory_growth: bool | None = None,
    *,
    visible_gpus: list[int] | None = None,
    logical_devices_per_gpu: int = 1,
    allocator: str | None = None,
    backend: str | None = None,
    devices: Any = None,
) -> GpuConfigReport:
    """Caps each GPU's memory for the Keras backend in use; call it first in a program.

    What it does depends on the backend (see docs/backends.md):

    - TensorFlow: logical device configurations, memory growth, visible devices and
      `TF_GPU_ALLOCATOR`, before TensorFlow initializes its GPUs.
    - JAX: the environment JAX reads when it creates its GPU backend
      (`XLA_PYTHON_CLIENT_PREALLOCATE`, `XLA_CLIENT_MEM_FRACTION` or its older name
      `XLA_PYTHON_CLIENT_MEM_FRACTION`, `XLA_PYTHON_CLIENT_ALLOCATOR`,
      `CUDA_VISIBLE_DEVICES`). JAX has one fraction for all GPUs.
    - PyTorch: `torch.cuda.set_per_process_memory_fraction` per GPU (this creates a
      CUDA context on each GPU), the allocator backend through `PYTORCH_ALLOC_CONF`
      (or its older name `PYTORCH_CUDA_ALLOC_CONF`) and `CUDA_VISIBLE_DEVICES`, the
      last two before torch initializes CUDA. PyTorch always grows on demand.

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
        allocator: `"cuda_malloc_async"` for CUDA's asynchronous allocator on every
            backend (`TF_GPU_ALLOCATOR`, `XLA_PYTHON_CLIENT_ALLOCATOR=cuda_async`,
            `backend:cudaMallocAsync`); JAX also takes its own names (`"platform"`,
            `"bfc"`, `"cuda_async"`, `"vmm"`, `"default"`), PyTorch `"native"`. Read only
            when the framework initializes. Defaults to `None` (left as it is).
        backend: `"tensorflow"`, `"jax"` or `"torch"`. Defaults to the Keras backend
            (`KERAS_BACKEND`), found without importing Keras or a framework.
        devices: the framework adapter (`tf.config` or `torch.cuda` calls); tests pass a
            fake. Defaults to the real one.

    Returns:
        A :class:`GpuConfigReport`; ``print(report)`` shows a table.

    Raises:
        ValueError: a bad argument (named in the message).
        GpuConfigError: the framework already initialized its GPUs with another setting.

    Example:
        >>> configure_gpus(memory_growth=True)
        >>> configure_gpus(memory_limit={0: "10GiB", 1: 0.5})
    """
    request = GpuRequest(
        memory_limit=memory_limit,
        memory_growth=memory_growth,
        visible_gpus=visible_gpus,
        logical_devices_per_gpu=logical_devices_per_gpu,
        allocator=allocator,
    )
    name = backend or backend_name()
    if name not in BACKENDS:
        message = f"configure_gpus: the {name!r} backend has no GPU memory settings."
        log.info(message)
        return GpuConfigReport(message=message, backend=name, environment=environment(name))
    report: GpuConfigReport = backend_module(name, "configure").configure(request, devices)
    return report


@dataclass(frozen=True)
class GpuRequest:
    """``configure_gpus``'s arguments, validated where no framework is needed.

    Attributes:
        memory_limit: the argument as given (echoed in error messages).
        memory_growth, visible_gpus, logical_devices_per_gpu, allocator: as given.
        limits: ``memory_limit`` parsed (a :class:`~keras_memguard.sizes.Size` or one
            per GPU index), ``None`` if not given.

    Example:
        >>> GpuRequest("4GiB", None, None, 1, None).limits
        Size(bytes=4294967296, fraction=None)
    """

    memory_limit: Any
    memory_growth: bool | None
    visible_gpus: list[int] | None
    logical_devices_per_gpu: int
    allocator: str | None
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        if self.memory_growth not in (None, True, False):
            raise invalid_argument("memory_growth", self.memory_growth, "True, False or None")
        positive_int(self.logical_devices_per_gpu, "logical_devices_per_gpu")
        object.__setattr__(self, "limits", _parse_limits(self.memory_limit))
        if self.logical_devices_per_gpu > 1 and self.limits is None:
            raise invalid_argument(
                "logical_devices_per_gpu",
                self.logical_devices_per_gpu,
                "1 unless memory_limit gives each logical GPU's size",
            )
        visible = self.visible_gpus
        if visible is not None and (
            not isinstance(visible, (list, tuple))
            or any(isinstance(i, bool) or not isinstance(i, int) for i in visible)
        ):
            raise invalid_argument("visible_gpus", visible, "a list of GPU indices or None")

    def check_allocator(self, accepted: Mapping[str, str] | tuple[str, ...]) -> None:
        """Refuses an ``allocator`` this framework does not know."""
        if self.allocator is not None and self.allocator not in accepted:
            raise invalid_argument("allocator", self.allocator, f"None or one of {tuple(accepted)}")

    def check_one_logical_device(self, framework: str) -> None:
        """Refuses ``logical_devices_per_gpu > 1`` (logical GPUs are TensorFlow's)."""
        if self.logical_devices_per_gpu != 1:
            raise invalid_argument(
                "logical_devices_per_gpu",
                self.logical_devices_per_gpu,
                f"1 under {framework} (logical GPUs are TensorFlow's)",
            )

    def check_indices(self, count: int | None, limits: bool = True) -> None:
        """Refuses ``visible_gpus`` (and ``memory_limit`` keys) beyond ``count`` GPUs."""
        if count is None:
            return
        if self.visible_gpus is not None:
            bad = [i for i in self.visible_gpus if not 0 <= i < count]
            if bad:
                raise invalid_argument(
                    "visible_gpus",
                    self.visible_gpus,
                    f"indices in 0..{count - 1}" if count else "None on a machine without GPUs",
                    f"no GPU {bad[0]} among {count}",
                )
        if limits and isinstance(self.limits, dict):
            bad = [i for i in self.limits if not 0 <= i < count]
            if bad:
                raise invalid_argument(
                    "memory_limit",
                    self.memory_limit,
                    f"GPU indices in 0..{count - 1}"
                    if count
                    else "no per-GPU mapping on a machine without GPUs",
                    f"there is no GPU {bad[0]}",
                )


def current_gpu_configuration(devices: Any = None, backend: str | None = None) -> dict[str, Any]:
    """The backend's GPU state as plain data, read without initializing anything.

    TensorFlow: before it is imported it reports nothing about devices (importing it
    just to look would cost seconds). JAX and PyTorch: the environment that governs
    their GPU memory and, once the framework has set up its GPUs, each device's figures.

    Example:
        >>> current_gpu_configuration(backend="jax")["initialized"]
        False
    """
    name = backend or backend_name()
    if name not in BACKENDS:
        return adapter_configuration(name)
    state: dict[str, Any] = backend_module(name, "configure").current_configuration(devices)
    return state


def adapter_configuration(name: str) -> dict[str, Any]:
    """The environment and each device's figures, from the backend's memory adapter."""
    adapter = current_backend(name)
    state: dict[str, Any] = {
        "backend": name,
        "initialized": adapter.is_gpu_initialized(),
        "environment": environment(name),
        "gpus": [],
    }
    for device in adapter.device_memory() or []:
        limit = format_bytes(device.limit) if device.limit is not None else "none"
        state["gpus"].append(
            {
                "device": f"{name} GPU {device.index}",
                "setting": f"limit {limit}, allocated {format_bytes(device.allocated)}",
                "memory_limit": device.limit,
                "allocated": device.allocated,
                "peak": device.peak,
                "reserved": device.reserved,
            }
        )
    return state


def environment(name: str) -> dict[str, str]:
    return {v: os.environ[v] for v in ENVIRONMENT.get(name, ()) if v in os.environ}


def package_reads(package: str, module_file: str, text: str) -> bool:
    """Whether an installed package's source mentions ``text`` (without importing it)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        try:
            with open(os.path.join(folder, module_file), encoding="utf-8") as f:
                if text in f.read():
                    return True
        except OSError:
            continue
    return False


def visible_devices(visible_gpus: list[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for indices into the GPUs visible now (checked before)."""
    current = os.environ.get("CUDA_VISIBLE_DEVICES")
    if current:
        ids = [x.strip() for x in current.split(",") if x.strip()]
        bad = [i for i in visible_gpus if not 0 <= i < len(ids)]
        if bad:
            raise invalid_argument(
                "visible_gpus",
                visible_gpus,
                f"indices into CUDA_VISIBLE_DEVICES={current!r}",
                f"no GPU {bad[0]} among the {len(ids)} visible",
            )
        return ",".join(ids[i] for i in visible_gpus)
    return ",".join(str(i) for i in visible_gpus)


def apply_environment(wanted: dict[str, str], initialized: bool, framework: str) -> dict[str, str]:
    """Sets ``wanted`` before the framework initializes; refuses a change after."""
    changes = {k: v for k, v in wanted.items() if os.environ.get(k) != v}
    if changes and initialized:
        now = ", ".join(f"{k}={os.environ.get(k)!r}" for k in changes)
        want = ", ".join(f"{k}={v!r}" for k, v in changes.items())
        raise GpuConfigError(
            f"{framework} has already initialized its GPUs, so {want} can no longer take "
            f"effect (in force: {now}). Call keras_memguard.configure_gpus(...) first in "
            "your program, before any array or tensor is created, or set the variables "
            "before starting Python."
        )
    os.environ.update(changes)
    return changes
