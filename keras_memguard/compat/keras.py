"""Keras's private names that keras-memguard relies on (``keras.src``), checked here.

Example:
    >>> lazy = resolve(LAZY_TENSORFLOW, loaded_only=True)
"""

from __future__ import annotations

from typing import Any

from keras_memguard.compat import PrivateSymbol

__all__ = ["JAX_STATE", "LAZY_TENSORFLOW", "SYMBOLS", "fit_data"]

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

# What fit trains on (issue #25): Keras passes callbacks no data, so the pre-flight
# reads it from fit's local ``epoch_iterator`` and its ``data_adapter``.
_ADAPTERS = "keras.src.trainers.data_adapters"
_MODEL_ONLY = "the pre-flight counts the model's memory only"
EPOCH_ITERATOR = PrivateSymbol(
    "keras.src.trainers.epoch_iterator", "EpochIterator", CHECKED, _MODEL_ONLY, "data_adapter"
)
FIT_TRAINER = PrivateSymbol(
    "keras.src.backend.tensorflow.trainer",
    "TensorFlowTrainer",
    CHECKED,
    _MODEL_ONLY,
    "epoch_iterator",
)
"""Every backend's ``fit`` builds its ``epoch_iterator`` before ``on_train_begin``."""
ARRAY_ADAPTER = PrivateSymbol(
    f"{_ADAPTERS}.array_data_adapter", "ArrayDataAdapter", CHECKED, _MODEL_ONLY, "_inputs"
)
ARRAY_ADAPTER_BATCH = PrivateSymbol(
    f"{_ADAPTERS}.array_data_adapter", "ArrayDataAdapter", CHECKED, _MODEL_ONLY, "_batch_size"
)
TF_DATASET_ADAPTER = PrivateSymbol(
    f"{_ADAPTERS}.tf_dataset_adapter", "TFDatasetAdapter", CHECKED, _MODEL_ONLY, "_dataset"
)
TORCH_ADAPTER = PrivateSymbol(
    f"{_ADAPTERS}.torch_data_loader_adapter",
    "TorchDataLoaderAdapter",
    CHECKED,
    _MODEL_ONLY,
    "_dataloader",
)
PY_DATASET_ADAPTER = PrivateSymbol(
    f"{_ADAPTERS}.py_dataset_adapter", "PyDatasetAdapter", CHECKED, _MODEL_ONLY, "py_dataset"
)


def fit_data(fit_locals: dict[str, Any]) -> tuple[Any, Any, int | None]:
    """``(x, y, batch_size)`` of the fit whose frame has these locals (``y`` None for a
    pipeline, ``x`` the adapter itself for one this does not know, a generator's).

    Raises ``KeyError``/``AttributeError`` where Keras changed them: the caller warns once.
    """
    adapter = fit_locals["epoch_iterator"].data_adapter
    inputs = getattr(adapter, "_inputs", None)  # arrays: (x,), (x, y) or (x, y, weights)
    if isinstance(inputs, tuple):
        return inputs[0], inputs[1] if len(inputs) > 1 else None, adapter._batch_size
    for name in ("_dataset", "py_dataset", "_dataloader"):  # tf.data, PyDataset, torch
        if getattr(adapter, name, None) is not None:
            return getattr(adapter, name), None, None
    return adapter, None, None


SYMBOLS = (
    LAZY_TENSORFLOW,
    JAX_STATE,
    EPOCH_ITERATOR,
    FIT_TRAINER,
    ARRAY_ADAPTER,
    ARRAY_ADAPTER_BATCH,
    TF_DATASET_ADAPTER,
    TORCH_ADAPTER,
    PY_DATASET_ADAPTER,
)
