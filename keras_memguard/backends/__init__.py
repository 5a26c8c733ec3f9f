"""Backends: one folder per framework, the only modules that import one.

``base.py`` is the interface the rest of the package calls (``current_backend``,
``worker_context``, ``tensor_types``, ``describe_tensor``, ``backend_module``);
``configure.py`` is ``configure_gpus``'s shared part; ``tensorflow/``, ``jax/`` and
``torch/`` hold modules of the same names (see ``base.MODULES``).
"""
