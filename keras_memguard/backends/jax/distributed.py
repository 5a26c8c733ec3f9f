"""The processes' vote under ``jax.distributed`` (multi-host JAX), by an all-gather.

Every process of a ``jax.distributed`` run runs its own ``fit`` and callbacks over a
``keras.distribution`` (``DataParallel`` or ``ModelParallel``) whose device mesh spans
the processes. If one process stopped alone, the others would wait in the step's next
collective until ``jax.distributed``'s heartbeat timeout ends the job. So the guard
decides together: at the same check step on every process, each puts its row (did it
cross a bound, which, by how much) into ``multihost_utils.process_allgather``, and every
process reads every row (``guard/distributed.py`` encodes and decodes them).

``keras.distribution.DataParallel`` over the devices of one process has one process:
there is one guard and its decision is the vote (``num_workers == 1``).

Example:
    >>> ctx = worker_context(model)        # under jax.distributed with 2 processes
    >>> ctx.all_rows([1, 0, 5])            # every process must call this at the same step
    [(0, 0, 0), (1, 0, 5)]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from keras_memguard.backends.base import WorkerContext, single_worker
from keras_memguard.errors import warn_once

__all__ = ["JaxProcesses", "supports_vote", "worker_context"]


def supports_vote() -> bool:
    """Whether processes of a multi-process run can vote: yes, by an all-gather."""
    return True


@dataclass(frozen=True)
class JaxProcesses(WorkerContext):
    """A process of a ``jax.distributed`` run; it votes by ``process_allgather``.

    A vote that cannot run (no cross-process collectives on this platform, say) warns
    once; from then on this process decides alone.
    """

    # {"broken": True} once a vote failed: no further collective is tried
    state: dict[str, bool] = field(default_factory=dict, compare=False)

    @property
    def run_name(self) -> str:
        return f"memory_p{self.index}"

    @property
    def chief_name(self) -> str:
        return "process 0"

    def worker_name(self, index: int) -> str:
        return f"process {index}"

    def all_rows(self, row: list[int]) -> list[tuple[int, ...]]:
        """Every process's ``row`` (int32 values), in process order; this one's alone
        if the vote cannot run."""
        if not self.multi_worker or self.state.get("broken"):
            return [tuple(row)]
        import numpy as np
        from jax.experimental import multihost_utils

        try:
            rows = multihost_utils.process_allgather(np.asarray(row, dtype=np.int32))
            return [tuple(int(v) for v in r) for r in np.asarray(rows).reshape(-1, len(row))]
        except Exception as err:  # a failing vote must never stop training
            self.state["broken"] = True
            warn_once(
                "jax-vote",
                f"keras-memguard cannot vote across JAX processes ({err!r}): each process's "
                "guard now decides alone, and a process that halts alone leaves the others "
                "waiting in their next collective until jax.distributed's heartbeat timeout.",
            )
            return [tuple(row)]

    def any_workers(self, flags: tuple[bool, ...]) -> tuple[bool, ...]:
        """Each of ``flags``, set on any process: one all-gather of them all together."""
        rows = self.all_rows([int(f) for f in flags])
        return tuple(any(r[i] for r in rows) for i in range(len(flags)))

    def any_worker(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any process: an all-gather every process must join."""
        return self.any_workers((flag,))[0]

    @property
    def every_worker_saves(self) -> bool:
        """No: process 0 saves alone, in ``save_scope``."""
        return False

    @contextmanager
    def save_scope(self) -> Iterator[None]:
        """No Keras distribution while process 0 saves alone.

        Keras's save builds a reference ``Optimizer`` (``saving_lib.get_attr_skipset``,
        Keras 3.15) whose variables, created under the distribution, are put on every
        process's devices: a collective the other processes never join (process 0 waited
        forever). Without it they stay local; the model's own variables are read as
        they are (replicated ones locally, ``cannot_save`` refuses sharded ones).
        """
        import keras

        distribution = keras.distribution.distribution()
        keras.distribution.set_distribution(None)
        try:
            yield
        finally:
            keras.distribution.set_distribution(distribution)

    def cannot_save(self, model: Any) -> str | None:
        """Why Keras cannot save ``model`` here: variables sharded across processes."""
        sharded = [
            v.path
            for v in _saved_variables(model)
            if not getattr(v.value, "is_fully_addressable", True)
            and not getattr(v.value, "is_fully_replicated", True)
        ]
        if not sharded:
            return None
        return (
            f"{len(sharded)} variable(s) (first {sharded[0]!r}) are sharded across processes "
            "(ModelParallel), and Keras's save cannot fetch shards held by other processes; "
            "save them with a multi-host checkpointer (orbax.checkpoint) from your script"
        )


def _saved_variables(model: Any) -> list[Any]:
    optimizer = getattr(model, "optimizer", None)
    return [*model.variables, *(getattr(optimizer, "variables", None) or ())]


def worker_context(model: Any) -> WorkerContext:
    """This process's place: several only under ``jax.distributed`` with a Keras
    distribution set (its device mesh spans the processes)."""
    import keras

    if keras.distribution.distribution() is None:  # asked first: it initialises nothing
        return single_worker(model)
    import jax

    count = jax.process_count()
    if count <= 1:
        return single_worker(model)
    index = jax.process_index()
    return JaxProcesses(num_workers=count, index=index, is_chief=index == 0)
