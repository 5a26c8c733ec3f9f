"""JAX has no input pipeline of its own: the same module name as ``tensorflow/`` and ``torch/``.

Keras on JAX reads NumPy arrays, ``tf.data``, ``PyDataset``, torch ``DataLoader`` and
Grain datasets; all but Grain's are read by the other modules. ``pipeline_parts`` says
a Grain dataset's buffers are not read (its worker and read options are not inspected
yet) and returns ``None`` for anything else.

Example:
    >>> pipeline_parts(grain_dataset)[0].method
    <Method.UNKNOWN: 'unknown'>
"""

from __future__ import annotations

from typing import Any

from keras_memguard.estimate.parts import EstimatePart, Method

__all__ = ["pipeline_parts"]


def pipeline_parts(dataset: Any) -> tuple[EstimatePart, ...] | None:
    """An unknown part for a Grain dataset (with the reason); ``None`` for anything else."""
    if not type(dataset).__module__.startswith("grain"):
        return None
    why = f"a Grain {type(dataset).__name__}'s buffers (workers, read options) are not read yet"
    return (EstimatePart("input pipeline", None, Method.UNKNOWN, why, "input"),)
