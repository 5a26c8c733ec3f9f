"""The few memory figures the guard adds to each epoch's Keras ``logs`` (``add_to_logs``).

Every key in ``logs`` lands in the progress bar, ``History``, ``CSVLogger`` and
``keras.callbacks.TensorBoard``'s ``train/`` run (as ``epoch_<key>``), so the guard adds
few: ``LOG_KEYS`` and, for each GPU whose framework allocator reports its peak,
``memory/gpu<i>_allocated_peak_mib``. The guard's own TensorBoard run gets every figure,
under ``PREFIX`` (docs/metrics.md).

Example:
    >>> keys = log_keys({"process_tree_peak_mib": 412.5}, snap)
    >>> add_to_logs(logs, {"process_tree_peak_mib": 412.5}, keys)
    >>> logs["memory/process_tree_peak_mib"]
    412.5
"""

from __future__ import annotations

from typing import Any

from keras_memguard.memory_snapshot import MemorySnapshot

__all__ = ["LOG_KEYS", "PREFIX", "add_to_logs", "log_keys"]

PREFIX = "memory/"
# The keys added to Keras `logs` at each epoch end (History, CSVLogger, progress bar,
# and keras.callbacks.TensorBoard's `epoch_<key>`), plus `memory/gpu<i>_allocated_peak_mib`
# for each GPU. Few on purpose: every key lands in all of those places.
LOG_KEYS = ("memory/process_tree_peak_mib",)


def log_keys(metrics: dict[str, float], snap: MemorySnapshot) -> list[str]:
    """The keys for ``logs``: ``LOG_KEYS``, and each GPU's allocator peak where reported."""
    keys = list(LOG_KEYS)
    for gpu in snap.gpus:
        key = f"gpu{gpu.index}_allocated_peak_mib"
        if key in metrics:  # only where the framework's allocator reports
            keys.append(PREFIX + key)
    return keys


def add_to_logs(logs: dict[str, Any], metrics: dict[str, float], keys: list[str]) -> None:
    """Puts each of ``keys`` into ``logs`` from ``metrics`` (unprefixed); NaN where absent."""
    for key in keys:
        logs[key] = metrics.get(key[len(PREFIX) :], float("nan"))
