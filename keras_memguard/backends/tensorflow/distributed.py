"""The workers' vote under TensorFlow's ``MultiWorkerMirroredStrategy``.

Every worker runs its own ``fit`` and callbacks. If one worker stops and another does
not, the next collective op pairs a scalar all-reduce with a gradient all-reduce and
both workers crash ("Collective ops is aborted by: Shape mismatch..."). So the guard
decides together: at the same check step on every worker it all-reduces a "must stop"
flag, and every worker stops if any must.

Example:
    >>> ctx = worker_context(model)
    >>> ctx.any_worker(local_must_stop)   # every worker must call this at the same step
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keras_memguard.backends.base import WorkerContext

__all__ = ["TensorFlowWorkers", "supports_vote", "worker_context"]


def supports_vote() -> bool:
    """Whether workers of a multi-worker run can vote: yes, by an all-reduce."""
    return True


@dataclass(frozen=True)
class TensorFlowWorkers(WorkerContext):
    """A worker of a ``tf.distribute`` cluster; it votes by an all-reduce."""

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
    return TensorFlowWorkers(
        strategy=strategy, num_workers=max(1, workers), index=index, is_chief=is_chief
    )
