"""The workers' vote under JAX: unsupported for now (each process decides alone).

``keras.distribution.DataParallel`` over local devices runs in one process: one guard
watches the whole process and its decision is the vote. Multi-process JAX
(``jax.distributed``) has no vote yet (planned: an all-reduce across processes).

Example:
    >>> supports_vote()
    False
"""

from __future__ import annotations

from keras_memguard.backends.base import single_worker

__all__ = ["supports_vote", "worker_context"]

worker_context = single_worker
"""A single worker's context: each process decides alone."""


def supports_vote() -> bool:
    """Whether workers of a multi-process run can vote: not yet."""
    return False
