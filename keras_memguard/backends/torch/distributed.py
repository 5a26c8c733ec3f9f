"""The workers' vote under PyTorch: unsupported (each process decides alone).

Keras's PyTorch backend trains in one process; a ``torch.distributed`` run has no vote
yet.

Example:
    >>> supports_vote()
    False
"""

from __future__ import annotations

from typing import Any

from keras_memguard.backends.base import WorkerContext

__all__ = ["supports_vote", "worker_context"]


def supports_vote() -> bool:
    """Whether workers of a multi-process run can vote: not under PyTorch."""
    return False


def worker_context(model: Any) -> WorkerContext:
    """A single worker's context (the process decides alone)."""
    return WorkerContext(strategy=getattr(model, "distribute_strategy", None))
