"""The workers' vote under JAX: unsupported for now (each process decides alone).

``keras.distribution.DataParallel`` over local devices runs in one process: one guard
watches the whole process and its decision is the vote. Multi-process JAX
(``jax.distributed``) has no vote yet (planned: an all-reduce across processes).

Example:
    >>> supports_vote()
    False
"""

from __future__ import annotations

from typing import Any

from keras_memguard.backends.base import WorkerContext

__all__ = ["supports_vote", "worker_context"]


def supports_vote() -> bool:
    """Whether workers of a multi-process run can vote: not yet under JAX."""
    return False


def worker_context(model: Any) -> WorkerContext:
    """A single worker's context (the process decides alone)."""
    return WorkerContext(strategy=getattr(model, "distribute_strategy", None))
