"""``configure_gpus``: cap each GPU's memory before the framework takes it.

Every framework takes GPU memory at its first operation: TensorFlow maps nearly all of
every visible GPU, JAX preallocates 75%, PyTorch grows a caching pool on demand. Their
limits can be set only before that moment (PyTorch's memory fraction excepted), so this
is an explicit bootstrap, to be called first thing in a script: never at import time,
safe to call twice, and it reports what it did. It configures the Keras backend in use
(``KERAS_BACKEND``); see docs/backends.md for what it does on each.

Users who cannot run code early can set the environment instead before Python starts
(``TF_FORCE_GPU_ALLOW_GROWTH=true``, ``XLA_PYTHON_CLIENT_PREALLOCATE=false``, ...).

Example:
    >>> import keras_memguard
    >>> report = keras_memguard.configure_gpus(memory_limit="6GiB")
    >>> print(report)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keras_memguard.backends.base import backend_name, current_backend
from keras_memguard.backends.jax import memory as jax_devices
from keras_memguard.backends.tensorflow.memory import TensorFlowDevices
from keras_memguard.backends.torch import memory as torch_devices
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
_JAX_ALLOCATORS = {
    "cuda_malloc_async": "cuda_async",
    "cuda_async": "cuda_async",
    "platform": "platform",
    "bfc": "bfc",
    "vmm": "vmm",
    "default": "default",
}
_TORCH_ALLOCATORS = {
    "cuda_malloc_async": "cudaMallocAsync",
    "cudaMallocAsync": "cudaMallocAsync",
    "native": "native",
}

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
    if memory_growth not in (None, True, False):
        raise invalid_argument("memory_growth", memory_growth, "True, False or None")
    positive_int(logical_devices_per_gpu, "logical_devices_per_gpu")
    limits = _parse_limits(memory_limit)
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

    name = backend or backend_name()
    if name == "jax":
        return _configure_jax(
            limits, memory_limit, memory_growth, visible_gpus, logical_devices_per_gpu, allocator
        )
    if name == "torch":
        return _configure_torch(
            limits,
            memory_limit,
            memory_growth,
            visible_gpus,
            logical_devices_per_gpu,
            allocator,
            devices,
        )
    if name != "tensorflow":
        message = f"configure_gpus: the {name!r} backend has no GPU memory settings."
        log.info(message)
        return GpuConfigReport(message=message, backend=name, environment=_environment(name))
    return _configure_tensorflow(
        limits,
        memory_limit,
        memory_growth,
        visible_gpus,
        logical_devices_per_gpu,
        allocator,
        devices,
    )


def _configure_tensorflow(
    limits: Size | dict[int, Size] | None,
    memory_limit: Any,
    memory_growth: bool | None,
    visible_gpus: list[int] | None,
    logical_devices_per_gpu: int,
    allocator: str | None,
    devices: TensorFlowDevices | None,
) -> GpuConfigReport:
    if allocator is not None and allocator not in _ALLOCATORS:
        raise invalid_argument("allocator", allocator, f"None or one of {_ALLOCATORS}")
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
        return GpuConfigReport(
            initialized=initialized,
            allocator=allocator_now,
            message=message,
            environment=_environment("tensorflow"),
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
            environment=_environment("tensorflow"),
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
        environment=_environment("tensorflow"),
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


def current_gpu_configuration(
    devices: TensorFlowDevices | None = None, backend: str | None = None
) -> dict[str, Any]:
    """The backend's GPU state as plain data, read without initializing anything.

    TensorFlow: before it is imported it reports nothing about devices (importing it
    just to look would cost seconds). JAX and PyTorch: the environment that governs
    their GPU memory and, once the framework has set up its GPUs, each device's figures.

    Example:
        >>> current_gpu_configuration(backend="jax")["initialized"]
        False
    """
    name = backend or backend_name()
    if name == "tensorflow":
        return _tensorflow_configuration(devices)
    adapter = current_backend(name)
    state: dict[str, Any] = {
        "backend": name,
        "initialized": adapter.is_gpu_initialized(),
        "environment": _environment(name),
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


def _tensorflow_configuration(devices: TensorFlowDevices | None) -> dict[str, Any]:
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


def _environment(name: str) -> dict[str, str]:
    return {v: os.environ[v] for v in ENVIRONMENT.get(name, ()) if v in os.environ}


def _package_reads(package: str, module_file: str, text: str) -> bool:
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


def _jax_fraction_variable() -> str:
    """The fraction variable to write: the one already set, else the one jaxlib reads.

    JAX refuses both at once; ``XLA_CLIENT_MEM_FRACTION`` replaced
    ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (still read, deprecated) in recent jaxlib.
    """
    for name in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION"):
        if os.environ.get(name):
            return name
    if _package_reads("jaxlib", "xla_client.py", "XLA_CLIENT_MEM_FRACTION"):
        return "XLA_CLIENT_MEM_FRACTION"
    return "XLA_PYTHON_CLIENT_MEM_FRACTION"


def _torch_conf_variable() -> str:
    """The allocator variable to write: the one already set, else torch's current name."""
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        if os.environ.get(name):
            return name
    if _package_reads("torch", os.path.join("cuda", "memory.py"), "PYTORCH_ALLOC_CONF"):
        return "PYTORCH_ALLOC_CONF"
    return "PYTORCH_CUDA_ALLOC_CONF"


def _with_alloc_backend(conf: str, backend: str) -> str:
    """``conf`` (``key:value,...``) with its ``backend:`` entry set to ``backend``."""
    entries = [e for e in conf.split(",") if e.strip() and not e.strip().startswith("backend:")]
    return ",".join([*entries, f"backend:{backend}"])


def _visible_devices(visible_gpus: list[int], count: int | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` for indices into the GPUs visible now."""
    if count is not None:
        bad = [i for i in visible_gpus if not 0 <= i < count]
        if bad:
            raise invalid_argument(
                "visible_gpus",
                visible_gpus,
                f"indices in 0..{count - 1}" if count else "None on a machine without GPUs",
                f"no GPU {bad[0]} among {count}",
            )
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


def _apply_environment(wanted: dict[str, str], initialized: bool, framework: str) -> dict[str, str]:
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


def _configure_jax(
    limits: Size | dict[int, Size] | None,
    memory_limit: Any,
    memory_growth: bool | None,
    visible_gpus: list[int] | None,
    logical_devices_per_gpu: int,
    allocator: str | None,
) -> GpuConfigReport:
    if logical_devices_per_gpu != 1:
        raise invalid_argument(
            "logical_devices_per_gpu",
            logical_devices_per_gpu,
            "1 under JAX (logical GPUs are TensorFlow's)",
        )
    if allocator is not None and allocator not in _JAX_ALLOCATORS:
        raise invalid_argument("allocator", allocator, f"None or one of {tuple(_JAX_ALLOCATORS)}")
    found = nvml.visible_devices()
    count = len(found) if found is not None else None
    totals = [d.total for d in found] if found else []
    initialized = jax_devices.is_initialized()
    no_gpu = ""
    if initialized and jax_devices.gpu_backend() is None:
        no_gpu = "JAX has already initialized its backends without a GPU"
    elif not initialized and found == []:
        no_gpu = "NVML sees no GPU here"
    elif not initialized and found is None and not _jax_has_gpu_plugin():
        no_gpu = "no JAX GPU plugin (jax[cuda12] or jax[cuda13]) is installed"
    if no_gpu:
        message = f"configure_gpus: {no_gpu}; JAX runs on the CPU, nothing to configure."
        log.info(message)
        return GpuConfigReport(
            initialized=initialized, message=message, backend="jax", environment=_environment("jax")
        )
    wanted: dict[str, str] = {}
    if limits is not None:
        fraction = _jax_fraction(limits, memory_limit, count, totals)
        wanted[_jax_fraction_variable()] = f"{fraction:.6g}"
    if memory_growth is not None:
        wanted["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false" if memory_growth else "true"
    if allocator is not None:
        wanted["XLA_PYTHON_CLIENT_ALLOCATOR"] = _JAX_ALLOCATORS[allocator]
    if visible_gpus is not None:
        wanted["CUDA_VISIBLE_DEVICES"] = _visible_devices(list(visible_gpus), count)
    changes = _apply_environment(wanted, initialized, "JAX")
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
        environment=_environment("jax"),
    )


def _jax_has_gpu_plugin() -> bool:
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
                _LIMIT_FORMS,
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


def _configure_torch(
    limits: Size | dict[int, Size] | None,
    memory_limit: Any,
    memory_growth: bool | None,
    visible_gpus: list[int] | None,
    logical_devices_per_gpu: int,
    allocator: str | None,
    devices: Any,
) -> GpuConfigReport:
    if logical_devices_per_gpu != 1:
        raise invalid_argument(
            "logical_devices_per_gpu",
            logical_devices_per_gpu,
            "1 under PyTorch (logical GPUs are TensorFlow's)",
        )
    if memory_growth is False:
        raise invalid_argument(
            "memory_growth",
            memory_growth,
            "True or None under PyTorch",
            "PyTorch's caching allocator always grows on demand",
        )
    if allocator is not None and allocator not in _TORCH_ALLOCATORS:
        raise invalid_argument("allocator", allocator, f"None or one of {tuple(_TORCH_ALLOCATORS)}")
    devices = devices or torch_devices.TorchDevices()
    initialized = devices.is_initialized()
    count = devices.device_count()
    if isinstance(limits, dict):
        bad = [i for i in limits if not 0 <= i < count]
        if bad:
            raise invalid_argument(
                "memory_limit",
                memory_limit,
                f"GPU indices in 0..{count - 1}" if count else "no per-GPU mapping without GPUs",
                f"there is no GPU {bad[0]}",
            )
    wanted: dict[str, str] = {}
    if allocator is not None:
        variable = _torch_conf_variable()
        wanted[variable] = _with_alloc_backend(
            os.environ.get(variable, ""), _TORCH_ALLOCATORS[allocator]
        )
    if visible_gpus is not None:
        wanted["CUDA_VISIBLE_DEVICES"] = _visible_devices(list(visible_gpus), count)
    changes = _apply_environment(wanted, initialized, "PyTorch")
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
            environment=_environment("torch"),
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
                    _LIMIT_FORMS,
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
        allocator=os.environ.get(_torch_conf_variable()),
        message=message,
        hidden=hidden,
        backend="torch",
        environment=_environment("torch"),
    )
