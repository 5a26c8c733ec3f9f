"""JAX's device boundary: the same module names as ``tensorflow/`` and ``torch/``.

- ``memory``: the :class:`~keras_memguard.backends.base.Backend` adapter (``ADAPTER``):
  device figures, peaks, release, the wait for dispatched steps, ``is_initialized``.
- ``configure``: its part of ``configure_gpus`` (``configure``, ``current_configuration``).
- ``oom``: ``is_out_of_memory``, recognising its out-of-memory errors.
- ``distributed``: ``supports_vote`` and ``worker_context``, the workers' vote.
- ``introspect``: ``tensor_types`` and ``describe``, for the leak code.
- ``compat``: the private names of JAX this package relies on, with the versions
  they were checked on (see :mod:`keras_memguard.compat`).
- planned: ``estimate`` (the pre-flight's figures) and ``evidence`` (what a halt keeps).

Importing this package imports no JAX; each module imports it only where it must.
"""

from keras_memguard.backends.jax.memory import ADAPTER

__all__ = ["ADAPTER"]
