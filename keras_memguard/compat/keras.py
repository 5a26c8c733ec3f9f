"""Keras's private names that keras-memguard relies on (``keras.src``), checked here.

Example:
    >>> lazy = resolve(LAZY_TENSORFLOW, loaded_only=True)
"""

from __future__ import annotations

from keras_memguard.compat import PrivateSymbol

__all__ = ["JAX_STATE", "LAZY_TENSORFLOW", "SYMBOLS"]

CHECKED = "keras 3.0-3.15.1"

LAZY_TENSORFLOW = PrivateSymbol(
    "keras.src.utils.module_utils",
    "tensorflow",
    CHECKED,
    "saving a model under JAX or PyTorch may import TensorFlow",
    source_mentions="_available",
)
"""Keras's lazy ``tensorflow`` module; its ``_available`` is cached (``None``: not asked)."""

JAX_STATE = PrivateSymbol(
    "keras.src.backend.jax.trainer",
    "JAXTrainer",
    CHECKED,
    "checks under JAX may see memory a few steps early",
    source_mentions="_jax_state",
)
"""Keras's JAX trainer keeps the training state's arrays in ``model._jax_state`` in fit."""

JAX_STATE_ATTRIBUTE = "_jax_state"
LAZY_AVAILABLE_ATTRIBUTE = "_available"

SYMBOLS = (LAZY_TENSORFLOW, JAX_STATE)
