"""The workers' vote under PyTorch: unsupported (each process decides alone).

Keras's PyTorch backend trains in one process; a ``torch.distributed`` run has no vote
yet.

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
