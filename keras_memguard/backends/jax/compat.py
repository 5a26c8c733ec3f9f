"""JAX's private names that keras-memguard relies on (``jax._src``).

``jax.devices()`` would create JAX's backends (and preallocate 75% of every GPU), so
whether JAX has created them is read from ``jax._src.xla_bridge._backends``.

Example:
    >>> backends = resolve(BACKENDS, loaded_only=True)   # None until JAX is imported
"""

from __future__ import annotations

from keras_memguard.compat import PrivateSymbol

__all__ = ["ARRAY_IMPL", "BACKENDS", "SYMBOLS"]

CHECKED = "jax 0.4.26-0.10.2"

BACKENDS = PrivateSymbol(
    "jax._src.xla_bridge",
    "_backends",
    CHECKED,
    "keras-memguard cannot read JAX's GPU memory and falls back to NVML",
)
"""JAX's initialised backends by platform (empty until JAX creates them)."""

ARRAY_IMPL = PrivateSymbol(
    "jax._src.array",
    "ArrayImpl",
    CHECKED,
    "leak reports do not see JAX arrays",
)
"""The concrete array type (``jax.Array`` is an ABC, slow in ``isinstance``)."""

SYMBOLS = (BACKENDS, ARRAY_IMPL)
