"""Where this process stands in a distributed run, and a vote across workers.

With ``MultiWorkerMirroredStrategy`` every worker runs its own ``fit`` and callbacks.
If one worker stops and another does not, the next collective op pairs a scalar
all-reduce with a gradient all-reduce and both workers crash ("Collective ops is aborted
by: Shape mismatch..."). So the guard decides together: at the same check step on every
worker it all-reduces a "must stop" flag, and every worker stops if any must.

On JAX, ``keras.distribution.DataParallel`` over local devices runs in one process:
there is one guard, it watches the whole process, and the vote is the process's own
decision (``num_workers == 1``). Multi-process JAX (``jax.distributed``) has no vote
yet: each process's guard decides alone.

Example:
    >>> ctx = worker_context(model)
    >>> ctx.any_worker(local_must_stop)   # every worker must call this at the same step
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["WorkerContext", "worker_context"]


@dataclass(frozen=True)
class WorkerContext:
    """This process's place in the run.

    Attributes:
        strategy: the model's ``tf.distribute`` strategy, if any.
        num_workers: worker processes in the cluster (1 without multi-worker).
        index: this worker's index (the chief is 0).
        is_chief: whether this worker writes the checkpoint and the main TensorBoard run.
    """

    strategy: Any = None
    num_workers: int = 1
    index: int = 0
    is_chief: bool = True

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    def any_worker(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any worker: an all-reduce every worker must join."""
        if not self.multi_worker:
            return flag
        import tensorflow as tf

        strategy = self.strategy
        value = strategy.experimental_distribute_values_from_function(
            lambda _: tf.constant(1 if flag else 0, tf.int32)
        )
        return int(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)) > 0

    def any_workers(self, flags: tuple[bool, ...]) -> tuple[bool, ...]:
        """Each of ``flags``, set on any worker: one all-reduce of them all together.

        Example:
            >>> must_stop, check_every_batch = ctx.any_workers((crossed, near))
        """
        if not self.multi_worker:
            return flags
        import tensorflow as tf

        strategy = self.strategy
        value = strategy.experimental_distribute_values_from_function(
            lambda _: tf.constant([int(f) for f in flags], tf.int32)
        )
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
        return tuple(int(v) > 0 for v in total.numpy())


def worker_context(model: Any) -> WorkerContext:
    """Reads the strategy of ``model`` (Keras 3 or tf_keras)."""
    strategy = getattr(model, "distribute_strategy", None)
    resolver = getattr(strategy, "cluster_resolver", None)
    if strategy is None or resolver is None:
        return WorkerContext(strategy=strategy)
    try:
        spec = resolver.cluster_spec().as_dict()
    except (AttributeError, ValueError):
        return WorkerContext(strategy=strategy)
    chiefs = len(spec.get("chief", []))
    workers = chiefs + len(spec.get("worker", []))
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    index = task_id + (chiefs if task_type == "worker" else 0)
    is_chief = bool(getattr(strategy.extended, "should_checkpoint", index == 0))
    return WorkerContext(
        strategy=strategy, num_workers=max(1, workers), index=index, is_chief=is_chief
    )
