"""``memguard doctor``: what this machine's memory looks like to a training job.

It gathers versions, the memory snapshot, TensorFlow's GPU configuration state and
the environment variables that change memory behaviour, then turns what it sees into
warnings a user can act on. It never initializes TensorFlow's GPUs.

Example:
    >>> report = doctor_report()
    >>> print(format_doctor(report))
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from dataclasses import asdict
from importlib import metadata
from typing import Any

from keras_memguard.backends.base import backend_name, current_backend
from keras_memguard.memory_snapshot import MemorySnapshot, snapshot
from keras_memguard.probes import cgroup, nvml
from keras_memguard.sizes import format_bytes

__all__ = ["ENVIRONMENT_VARIABLES", "diagnose", "doctor_report", "format_doctor"]

ENVIRONMENT_VARIABLES = (
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_GPU_ALLOCATOR",
    "CUDA_VISIBLE_DEVICES",
    "TF_CPP_MIN_LOG_LEVEL",
    "KERAS_BACKEND",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
    "PYTORCH_ALLOC_CONF",
    "PYTORCH_CUDA_ALLOC_CONF",
)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _gpu_configuration() -> dict[str, Any]:
    """The Keras backend's GPU state, read without initializing or importing anything.

    No framework is imported: TensorFlow alone takes seconds and prints its start-up
    lines, it may not be installed at all (a GPU machine set up for JAX or PyTorch), and
    in this fresh process its settings could only be the defaults, which the
    environment section shows (``TF_FORCE_GPU_ALLOW_GROWTH``, ``TF_GPU_ALLOCATOR``).
    """
    from keras_memguard.backends.configure import current_gpu_configuration

    return current_gpu_configuration()


def nvml_status() -> str | None:
    """``None`` where NVML works; else what is missing and what to install.

    Without NVML the guard sees GPUs only through the framework's allocator: no
    device totals (so no fractional `max_gpu_memory`) and no other processes' usage.
    """
    if nvml.is_available():
        return None
    try:
        importlib.import_module("pynvml")
    except ImportError:
        return (
            "not available: nvidia-ml-py is not installed. On a machine with NVIDIA GPUs: "
            "pip install 'keras-memguard[gpu]' (or nvidia-ml-py)"
        )
    return (
        "not available: nvidia-ml-py is installed but cannot load the NVIDIA driver "
        "(libnvidia-ml.so.1): no NVIDIA GPU here, or its driver is not installed or not "
        "mounted into this container (docker run --gpus all)"
    )


def diagnose(
    snap: MemorySnapshot,
    env: dict[str, str],
    installed: dict[str, Any],
    container_error: str | None = None,
    gpu_order_certain: bool = True,
) -> list[str]:
    """Turns a snapshot and the environment into warnings a user can act on."""
    advice = []
    if container_error:
        advice.append(
            f"keras-memguard {container_error}. Give max_process_memory and "
            "min_available_memory in bytes (e.g. '12GiB') while this lasts."
        )
    if (
        snap.container_limit is not None
        and snap.system_total
        and snap.container_limit < 0.75 * snap.system_total
    ):
        advice.append(
            f"The container limit ({format_bytes(snap.container_limit)}) is far below host "
            f"RAM ({format_bytes(snap.system_total)}). tf.data's autotune budget defaults to "
            "half of *host* available RAM and can overrun the container: set "
            "tf.data.Options().autotune.ram_budget, or build the pipeline with "
            "keras_memguard.dataset_from_tfds, which sizes it from the container limit."
        )
    if snap.container_oom_kills:
        advice.append(
            f"The OOM killer has already killed {snap.container_oom_kills} process(es) in this "
            "container: bound the run with MemGuardCallback(max_process_memory=...)."
        )
    if snap.swap_used and snap.swap_used > 256 * 2**20:
        advice.append(
            f"{format_bytes(snap.swap_used)} of swap is in use: a training step that touches "
            "swapped pages runs orders of magnitude slower. Free memory or lower the batch size."
        )
    limit, available = snap.effective_limit, snap.effective_available
    if limit and available is not None and available < 0.10 * limit:
        advice.append(
            f"Only {format_bytes(available)} of {format_bytes(limit)} is available: close other "
            "programs or expect the OOM killer."
        )
    for gpu in snap.gpus:
        if gpu.total and gpu.device_used is not None:
            others = gpu.device_used - (gpu.process_used or 0)
            if others > 0.5 * gpu.total:
                advice.append(
                    f"Other processes hold {format_bytes(others)} of GPU {gpu.index}'s "
                    f"{format_bytes(gpu.total)}: check nvidia-smi, or pick another GPU with "
                    "CUDA_VISIBLE_DEVICES."
                )
    if snap.gpus and not gpu_order_certain:
        advice.append(
            "This machine mixes GPU models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA "
            "numbers the fastest GPU first, NVML by PCI bus, so per-GPU figures may land on "
            "the wrong GPU. Set CUDA_DEVICE_ORDER=PCI_BUS_ID (or list GPU UUIDs in "
            "CUDA_VISIBLE_DEVICES)."
        )
    if installed.get("pynvml-distribution"):
        advice.append(
            "The deprecated 'pynvml' distribution is installed and may shadow nvidia-ml-py: "
            "pip uninstall pynvml && pip install --force-reinstall nvidia-ml-py"
        )
    if env.get("TF_FORCE_GPU_ALLOW_GROWTH", "").lower() not in ("", "true", "false"):
        advice.append("TF_FORCE_GPU_ALLOW_GROWTH must be 'true' or 'false'; TensorFlow ignores it.")
    return advice


def doctor_report() -> dict[str, Any]:
    """Everything ``memguard doctor`` shows, as plain data."""
    snap = snapshot()
    container = cgroup.read_container_memory()
    container_error = cgroup.read_error()
    env = {name: os.environ[name] for name in ENVIRONMENT_VARIABLES if name in os.environ}
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "keras-memguard": _version("keras-memguard"),
        "tensorflow": _version("tensorflow") or _version("tensorflow-cpu"),
        "keras": _version("keras"),
        "keras_backend": backend_name(),
        "tensorflow-datasets": _version("tensorflow-datasets"),
        "nvidia-ml-py": _version("nvidia-ml-py"),
        "nvidia_driver": nvml.driver_version(),
        "pynvml-distribution": _version("pynvml"),
    }
    return {
        "versions": versions,
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "snapshot": asdict(snap),
        "container": asdict(container) if container else None,
        "effective_limit": snap.effective_limit,
        "effective_available": snap.effective_available,
        "nvml": nvml_status(),
        "gpu_configuration": _gpu_configuration(),
        "environment": env,
        "warnings": diagnose(
            snap, env, versions, container_error, nvml.order_is_certain() if snap.gpus else True
        ),
        "tensorflow_initialized": current_backend("tensorflow").is_gpu_initialized(),
    }


def _row(label: str, value: object) -> str:
    return f"  {label:<28} {value}"


def format_doctor(report: dict[str, Any]) -> str:
    """Formats :func:`doctor_report`'s data as a readable report."""
    snap = report["snapshot"]
    b = format_bytes
    lines = ["keras-memguard doctor", "", "Versions"]
    for name, value in report["versions"].items():
        if value is not None and name != "pynvml-distribution":
            lines.append(_row(name, value))
    lines.append(_row("platform", report["platform"]))
    lines += ["", "Process"]
    lines.append(_row("rss", b(snap["process_rss"])))
    lines.append(
        _row(
            "tree (rss + children private)",
            f"{b(snap['process_tree'])} ({snap['child_processes']} children, "
            f"{b(snap['process_children'])} private)",
        )
    )
    lines.append(_row("peak rss", b(snap["process_peak_rss"])))
    lines += ["", "Host"]
    lines.append(_row("total", b(snap["system_total"])))
    lines.append(_row("available", b(snap["system_available"])))
    lines.append(_row("used", f"{snap['system_used_percent']}%"))
    lines.append(_row("swap used", b(snap["swap_used"])))
    if snap["container_usage"] is not None:
        lines += ["", "Container (cgroup)"]
        limit = snap["container_limit"]
        lines.append(_row("limit", b(limit) if limit is not None else "none"))
        container = report.get("container") or {}
        if container.get("path"):
            lines.append(_row("cgroup read", container["path"]))
        lines.append(_row("usage (with page cache)", b(snap["container_usage"])))
        lines.append(_row("working set", b(snap["container_working_set"])))
        if container.get("leaf") and container.get("leaf") != container.get("path"):
            lines.append(_row("this process's cgroup", container["leaf"]))
            lines.append(_row("  its own charge", b(container.get("leaf_usage"))))
        if snap["container_oom_kills"] is not None:
            lines.append(_row("oom kills", snap["container_oom_kills"]))
    lines += ["", "Effective"]
    lines.append(_row("limit (min host, container)", b(report["effective_limit"])))
    lines.append(_row("available", b(report["effective_available"])))
    lines += ["", "GPUs"]
    if report.get("nvml"):
        lines.append(_row("NVML", report["nvml"]))
    elif not snap["gpus"]:
        visible = report["environment"].get("CUDA_VISIBLE_DEVICES")
        hidden = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        lines.append(_row("NVML", f"works; no GPU visible to this process{hidden}"))
    if snap["gpus"]:
        for gpu in snap["gpus"]:
            own = b(gpu["process_used"]) if gpu["process_used"] is not None else "n/a"
            lines.append(
                _row(
                    f"GPU {gpu['index']} {gpu['name'] or ''}".strip(),
                    f"{b(gpu['device_used'])} / {b(gpu['total'])} used (all processes), "
                    f"this process {own}",
                )
            )
    config = report["gpu_configuration"]
    if config.get("gpus"):
        framework = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
        lines += ["", f"{framework.get(config.get('backend', ''), 'Backend')} GPU configuration"]
        lines.append(_row("initialized", "yes" if config["initialized"] else "no"))
        for gpu in config["gpus"]:
            lines.append(_row(gpu["device"], gpu["setting"]))
    if report["environment"]:
        lines += ["", "Environment"]
        for name, value in report["environment"].items():
            lines.append(_row(name, value))
    lines += ["", "Warnings" if report["warnings"] else "No warnings."]
    for text in report["warnings"]:
        lines.append(f"  - {text}")
    return "\n".join(lines)


def print_doctor(as_json: bool = False, stream: Any = None) -> None:
    """Prints the report (``memguard doctor``)."""
    stream = stream or sys.stdout
    report = doctor_report()
    if as_json:
        stream.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        stream.write(format_doctor(report) + "\n")
