"""What a halt keeps of TensorFlow's device memory: each device's current and peak bytes.

``tf.config.experimental.get_memory_info`` reads each logical device's allocator (its
bytes in use now and its peak), CPU included. A profiler trace of the steps before the
halt would cost every step while it runs, so none is taken; TensorFlow keeps no
allocation history to record.

Example:
    >>> write_evidence("logs/memory_evidence", budget=64 * 2**20)
    [EvidenceFile(name='device_memory.json', ...)]
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from keras_memguard.backends.base import EvidenceFile
from keras_memguard.backends.tensorflow.memory import is_initialized
from keras_memguard.errors import warn_once

__all__ = ["attach_oom_observer", "start_recording", "stop_recording", "write_evidence"]

STATS = "device_memory.json"


def start_recording(max_entries: int) -> bool:
    """TensorFlow records no allocation history cheaply: nothing to switch on (``False``)."""
    return False


def stop_recording() -> None:
    """Nothing was switched on."""


def attach_oom_observer(on_oom: Callable[[], None] | None) -> bool:
    """TensorFlow's allocator offers no out-of-memory observer (``False``)."""
    return False


def device_memory_info() -> list[dict[str, Any]]:
    """``[{"device", "type", "current_bytes", "peak_bytes"}]`` per logical device.

    A device whose allocator keeps no statistics gets an ``"error"`` instead.
    """
    import tensorflow as tf

    rows: list[dict[str, Any]] = []
    for device in tf.config.list_logical_devices():
        row: dict[str, Any] = {"device": device.name, "type": device.device_type}
        try:
            info = tf.config.experimental.get_memory_info(device.name)
            row.update(current_bytes=int(info["current"]), peak_bytes=int(info["peak"]))
        except Exception as err:  # ValueError: no statistics on this device
            row["error"] = str(err)
        rows.append(row)
    return rows


def write_evidence(directory: str, budget: int) -> list[EvidenceFile]:
    """Writes each device's current and peak bytes into ``directory`` (a few hundred bytes).

    Fails soft: one warning and no file.
    """
    if "tensorflow" not in sys.modules or not is_initialized():
        return []
    try:
        with open(os.path.join(directory, STATS), "w") as f:
            json.dump({"devices": device_memory_info()}, f, indent=2)
    except Exception as err:  # never stop the halt
        warn_once(
            "evidence-tensorflow",
            f"keras-memguard cannot read TensorFlow's device memory ({err!r}); the halt's "
            "evidence holds the summary only.",
        )
        return []
    return [
        EvidenceFile(
            STATS,
            "each device's bytes in use and peak (tf.config.experimental.get_memory_info)",
            f"python -m json.tool {STATS}",
        )
    ]
