"""Where this process stands in a distributed run, and a vote across workers.

With ``MultiWorkerMirroredStrategy`` every worker runs its own ``fit`` and callbacks,
and the guard must decide together: at the same check step on every worker it
all-reduces a "must stop" flag, and every worker stops if any must (see
``backends/tensorflow/distributed.py``). On JAX, ``keras.distribution.DataParallel`` over
local devices runs in one process: there is one guard, it watches the whole process,
and the vote is the process's own decision (``num_workers == 1``). Multi-process JAX
(``jax.distributed``) and PyTorch have no vote yet: each process's guard decides alone.

The frameworks' parts live in ``backends/<framework>/distributed.py``; this module is
the guard's view of them.

Example:
    >>> ctx = worker_context(model)
    >>> ctx.any_worker(local_must_stop)   # every worker must call this at the same step
"""

from __future__ import annotations

from keras_memguard.backends.base import WorkerContext, worker_context

__all__ = ["WorkerContext", "worker_context"]
