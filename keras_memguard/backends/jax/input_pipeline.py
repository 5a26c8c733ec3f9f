"""JAX has no input pipeline of its own: the same module name as ``tensorflow/`` and ``torch/``.

Keras on JAX reads NumPy arrays, ``tf.data``, ``PyDataset``, torch ``DataLoader`` and
Grain datasets; all but Grain's are read by the other modules. ``pipeline_buffers`` says
a Grain dataset's buffers are not read (its worker and read options are not inspected
yet) and returns ``None`` for anything else.

Example:
    >>> pipeline_buffers(grain_dataset)[0].method
    'unknown'
"""

from __future__ import annotations

from typing import Any

from keras_memguard.backends.pipeline import Buffer

__all__ = ["pipeline_buffers"]


def pipeline_buffers(dataset: Any) -> tuple[Buffer, ...] | None:
    """An unknown part for a Grain dataset (with the reason); ``None`` for anything else."""
    if not type(dataset).__module__.startswith("grain"):
        return None
    why = f"a Grain {type(dataset).__name__}'s buffers (workers, read options) are not read yet"
    return (Buffer.unknown("input pipeline", why),)
