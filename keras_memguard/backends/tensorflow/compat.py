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

TF_FUNCTION = PrivateSymbol(
    "tensorflow.python.eager.polymorphic_function.polymorphic_function",
    "Function",
    CHECKED,
    "the growth classifier counts no tf.function traces",
    source_mentions="_function_cache",
)
"""``tf.function``'s class; its ``_function_cache`` holds one concrete function per trace."""
FUNCTION_CACHE = "_function_cache"

SYMBOLS = (CONTEXT, CONTEXT_CLASS, EAGER_TENSOR, RESOURCE_VARIABLE, TF_FUNCTION)
