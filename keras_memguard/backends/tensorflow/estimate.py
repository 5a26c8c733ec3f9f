"""The TensorFlow training step's memory from XLA's buffer assignment, without running it.

``tf.function(train_step, jit_compile=True).experimental_get_compiler_ir(*specs)``
compiles the step for ``TensorSpec``s and returns XLA's optimized HLO with its buffer
assignment (``stage="optimized_hlo_proto_serialized"``); the temporaries are the
allocations that are neither parameters, constants, thread-local nor live out, as in
XLA's own ``memory_analysis``. Tracing runs no op and touches no variable.

With ``jit_compile=True`` this is the step ``fit`` runs (``Method.COMPILED``). Without
XLA (Keras's default on CPU) TensorFlow's executor frees tensors as it goes and
measured about half of it: the figure is reported as an upper bound.

Parsing needs TensorFlow's private ``hlo_pb2`` (checked: TensorFlow 2.21.0); it is
wrapped in :func:`hlo_proto_class` and :func:`optimized_hlo`, which fail soft.

Example:
    >>> from keras_memguard.backends.step import BatchSpec
    >>> at = step_estimator(model, (BatchSpec((64,), "float32"), BatchSpec((), "int32")))
    >>> at(128).method                      # "upper bound" unless jit_compile=True
    'upper bound'
"""

from __future__ import annotations

import importlib
from typing import Any

from keras_memguard.backends.step import StepEstimator, StepMemory, batch_structure
from keras_memguard.errors import warn_once

__all__ = [
    "CHECKED",
    "FIRST_FIT_RUNTIME",
    "hlo_proto_class",
    "optimized_hlo",
    "step_estimator",
    "step_method",
]

CHECKED = "tensorflow 2.21.0"
# The runtime's own memory at a process's first fit on CPU (the eager context, tf.function
# tracing, the executor's thread pools), which no model part counts: peak RSS during a
# 3-step fit of an 8-16-2 dense model at batch 8 minus RSS before it, the lower of two
# fresh processes (tensorflow 2.21.0, Keras 3.15.1).
FIRST_FIT_RUNTIME = (22 * 2**20, "tensorflow 2.21.0")


def hlo_proto_class() -> Any:
    """TensorFlow's private ``hlo_pb2.HloProto`` (checked: TF 2.21.0), or ``None``."""
    try:
        hlo_pb2 = importlib.import_module("tensorflow.compiler.xla.service.hlo_pb2")
        return hlo_pb2.HloProto
    except Exception as err:
        warn_once(
            "tf-hlo-pb2",
            f"keras-memguard cannot import TensorFlow's private hlo_pb2 (checked with "
            f"{CHECKED}): {type(err).__name__}: {err}; the step's temporaries are unknown",
        )
        return None


def optimized_hlo(function: Any, specs: list[Any]) -> bytes:
    """The serialized optimized ``HloProto`` of a ``jit_compile=True`` ``tf.function``.

    ``experimental_get_compiler_ir`` is experimental (checked: TF 2.21.0); it raises
    where the function cannot be compiled by XLA.
    """
    ir = function.experimental_get_compiler_ir(*specs)
    return bytes(ir(stage="optimized_hlo_proto_serialized"))


def _allocation_sizes(proto: Any) -> tuple[int, int, int]:
    """(temporaries, arguments, outputs) of a parsed ``HloProto``'s buffer assignment."""
    temp = arguments = outputs = 0
    for allocation in proto.buffer_assignment.buffer_allocations:
        if allocation.is_entry_computation_parameter:
            arguments += allocation.size
        elif allocation.maybe_live_out:
            outputs += allocation.size
        elif not (allocation.is_constant or allocation.is_thread_local):
            temp += allocation.size
    return temp, arguments, outputs


def step_method(model: Any) -> str:
    """How the step's figure is obtained, known without compiling: ``"compiled"`` with
    ``jit_compile=True`` (the step ``fit`` runs), else ``"upper bound"``."""
    return "compiled" if bool(getattr(model, "jit_compile", False)) else "upper bound"


def step_estimator(model: Any, spec: Any) -> StepEstimator:
    """``f(batch_size) -> StepMemory`` for a built, compiled ``model`` (see ``backends.step``)."""
    import tensorflow as tf
    from keras import tree

    def flat_step(*flat: Any) -> Any:
        return model.train_step(tree.pack_sequence_as(spec, list(flat)))

    function = tf.function(flat_step, jit_compile=True)
    method = step_method(model)

    def at(batch_size: int) -> StepMemory:
        proto_class = hlo_proto_class()
        if proto_class is None:
            return StepMemory.unknown(f"TensorFlow's hlo_pb2 is unavailable ({CHECKED} checked)")
        specs = tree.flatten(batch_structure(spec, batch_size, tf.TensorSpec))
        try:
            proto = proto_class()
            proto.ParseFromString(optimized_hlo(function, specs))
        except Exception as err:
            return StepMemory.unknown(f"XLA cannot compile train_step: {type(err).__name__}: {err}")
        temp, arguments, outputs = _allocation_sizes(proto)
        detail = f"XLA buffer assignment: {temp:,} B temporaries + {outputs:,} B outputs"
        if method != "compiled":
            detail += "; the model runs without XLA (jit_compile=False), which needs less"
        return StepMemory(
            temporaries=temp + outputs,
            method=method,
            detail=detail,
            arguments=arguments,
            platform="gpu" if tf.config.list_logical_devices("GPU") else "cpu",
        )

    return at
