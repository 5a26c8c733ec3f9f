"""Where this process stands in a distributed run, and the vote across workers.

With ``MultiWorkerMirroredStrategy`` (TensorFlow) or ``jax.distributed`` (several JAX
processes under a ``keras.distribution``), every worker runs its own ``fit`` and
callbacks, and the guard must decide together: at the same check step on every worker
it votes, and every worker stops if any must. TensorFlow all-reduces the flags, so a
worker whose own memory was fine learns only that another worker crossed a bound; JAX
all-gathers each process's row (``encode_row``), so every process's halt line names the
process and the bound it crossed. ``keras.distribution.DataParallel`` over the devices
of one process is one process: its guard's decision is the vote. PyTorch has no vote:
each process decides alone.

The frameworks' parts live in ``backends/<framework>/distributed.py``; this module is
the guard's view of them.

Example:
    >>> ctx = worker_context(model)
    >>> vote(ctx, crossings, near)   # every worker must call this at the same step
    Vote(crossing=Crossing('process_tree', ...), worker=1, near=False)
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_memguard.backends.base import WorkerContext, worker_context
from keras_memguard.guard.policy import Crossing

__all__ = [
    "ANOTHER_WORKER",
    "Vote",
    "WorkerContext",
    "decode_rows",
    "encode_row",
    "vote",
    "worker_context",
]

# Halting for a bound another worker crossed, where the vote says only that (TensorFlow).
ANOTHER_WORKER = Crossing("another_worker", "a bound on another worker", 0, 0)
_NAME = 32  # bytes of a metric's or a parameter's name in a row
_HALF = 2**31  # a byte count travels as two int32 halves


@dataclass(frozen=True)
class Vote:
    """What the workers decided: the crossing that stops them all (``None``: none), the
    worker that crossed it (``None``: unknown), and whether any asks for checks sooner."""

    crossing: Crossing | None
    worker: int | None
    near: bool


def encode_row(found: list[Crossing], near: bool) -> list[int]:
    """This worker's vote as int32 values: its first crossing (if any) and ``near``.

    Example:
        >>> decode_rows([encode_row([], True)]).near
        True
    """
    row = [int(bool(found)), int(near)]
    first = found[0] if found else Crossing("", "", 0, 0)
    for size in (first.value, first.bound, first.reserve):
        size = max(0, int(size))
        row += [size // _HALF, size % _HALF]
    for name in (first.metric, first.parameter):
        raw = name.encode()[:_NAME]
        row += [*raw, *([0] * (_NAME - len(raw)))]
    return row


def decode_rows(rows: list[tuple[int, ...]], first: int = 0) -> Vote:
    """The vote from every worker's row (in worker order, from worker ``first``): the
    lowest-indexed worker's crossing."""
    near = any(row[1] for row in rows)
    for worker, row in enumerate(rows, start=first):
        if row[0]:
            value, bound, reserve = (row[i] * _HALF + row[i + 1] for i in (2, 4, 6))
            metric, parameter = (
                bytes(row[i : i + _NAME]).rstrip(b"\0").decode(errors="replace")
                for i in (8, 8 + _NAME)
            )
            return Vote(Crossing(metric, parameter, value, bound, reserve), worker, near)
    return Vote(None, None, near)


def vote(workers: WorkerContext, found: list[Crossing], near: bool) -> Vote:
    """The workers' vote on ``found`` (this worker's crossings) and ``near``.

    Every worker must call it at the same step: it runs one collective.
    """
    rows = workers.all_rows(encode_row(found, near))
    if rows is not None:  # this worker's row alone where the vote could not run
        return decode_rows(rows, first=workers.index if len(rows) == 1 else 0)
    voted, near = workers.any_workers((bool(found), near))
    if found:
        return Vote(found[0], workers.index, near)
    return Vote(ANOTHER_WORKER if voted else None, None, near)
