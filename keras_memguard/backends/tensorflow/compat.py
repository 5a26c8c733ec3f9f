"""TensorFlow's private names that keras-memguard relies on (``tensorflow.python``).

Example:
    >>> context = resolve(CONTEXT)        # TensorFlow's eager context factory, or None
"""

from __future__ import annotations

from keras_memguard.compat import PrivateSymbol

__all__ = [
    "CONTEXT",
    "EAGER_TENSOR",
    "FUNCTION_CACHE",
    "RESOURCE_VARIABLE",
    "SYMBOLS",
    "TF_FUNCTION",
]

CHECKED = "tensorflow 2.16-2.21.0"

CONTEXT = PrivateSymbol(
    "tensorflow.python.eager.context",
    "context",
    CHECKED,
    "keras-memguard cannot tell whether TensorFlow has set up its GPUs",
)
"""The eager context; its ``_context_handle`` is set once TensorFlow initialized devices."""
CONTEXT_CLASS = PrivateSymbol(
    "tensorflow.python.eager.context",
    "Context",
    CHECKED,
    "keras-memguard cannot tell whether TensorFlow has set up its GPUs",
    source_mentions="_context_handle",
)
CONTEXT_HANDLE = "_context_handle"

EAGER_TENSOR = PrivateSymbol(
    "tensorflow.python.framework.ops",
    "EagerTensor",
    CHECKED,
    "leak reports do not see TensorFlow's eager tensors",
)
RESOURCE_VARIABLE = PrivateSymbol(
    "tensorflow.python.ops.resource_variable_ops",
    "BaseResourceVariable",
    CHECKED,
    "leak reports do not see TensorFlow's variables",
)

# tf.data's Python objects, walked by input_pipeline.py (issue #25): each
# transformation's inputs and the parameters of those that buffer elements.
_DATA = "tensorflow.python.data.ops"
_NO_BUFFERS = "the pre-flight cannot read this tf.data pipeline's buffers"
DATASET = PrivateSymbol(f"{_DATA}.dataset_ops", "DatasetV2", CHECKED, _NO_BUFFERS, "_inputs")
SHUFFLE = PrivateSymbol(
    f"{_DATA}.shuffle_op", "_ShuffleDataset", CHECKED, _NO_BUFFERS, "_buffer_size"
)
BATCH = PrivateSymbol(f"{_DATA}.batch_op", "_BatchDataset", CHECKED, _NO_BUFFERS, "_batch_size")
PARALLEL_MAP = PrivateSymbol(
    f"{_DATA}.map_op", "_ParallelMapDataset", CHECKED, _NO_BUFFERS, "_num_parallel_calls"
)
CACHE = PrivateSymbol(f"{_DATA}.cache_op", "CacheDataset", CHECKED, _NO_BUFFERS, "_filename")
TENSOR_SLICES = PrivateSymbol(
    f"{_DATA}.from_tensor_slices_op", "_TensorSliceDataset", CHECKED, _NO_BUFFERS, "_tensors"
)
DATASET_INPUTS = "_inputs"
"""``dataset._inputs()``: the datasets a transformation reads."""
DATASET_PARAMETERS = {
    "buffer_size": "_buffer_size",
    "batch_size": "_batch_size",
    "num_parallel_calls": "_num_parallel_calls",
    "filename": "_filename",
    "tensors": "_tensors",
}
"""A transformation's parameters, by the name ``tf.data.Dataset``'s methods give them."""
TF_FUNCTION = PrivateSymbol(
    "tensorflow.python.eager.polymorphic_function.polymorphic_function",
    "Function",
    CHECKED,
    "the growth classifier counts no tf.function traces",
    source_mentions="_function_cache",
)
"""``tf.function``'s class; its ``_function_cache`` holds one concrete function per trace."""
FUNCTION_CACHE = "_function_cache"

SYMBOLS = (
    CONTEXT,
    CONTEXT_CLASS,
    EAGER_TENSOR,
    RESOURCE_VARIABLE,
    DATASET,
    SHUFFLE,
    BATCH,
    PARALLEL_MAP,
    CACHE,
    TENSOR_SLICES,
    TF_FUNCTION,
)
