"""The model's parts of an estimate, counted from shapes and dtypes: no step runs.

``model_parts(model)`` gives four parts:

- ``variables``: the model's weights, trainable and not (exact);
- ``optimizer state``: the optimizer's variables when it is built (exact), else its
  slots predicted from its class (Adam, AdamW: 2 per trainable weight; SGD with
  momentum: 1; ...), unknown with the reason for a class it does not know;
- ``gradients``: one gradient per trainable weight, live together between the backward
  pass and the update (exact);
- ``runtime overhead``: the framework's own memory at a process's first fit on CPU
  (thread pools, the first compile or trace), a figure measured once per framework
  version for a tiny model (``backends.step.first_fit_runtime``; under PyTorch, a tiny
  convolutional one for a model with a convolution layer, whose kernels page in more of
  its library); unknown on a GPU. It does not scale with the batch; calibration measures
  it for the model at hand.

Each part is ``where="device"`` when the model's variables live on a GPU, else
``"host"``. Counting takes well under a millisecond per hundred weights and is cached
per model until its weights or its optimizer change.

Example:
    >>> model.compile(optimizer="adam", loss="mse")
    >>> [str(part) for part in model_parts(model)][:2]
    ['variables: 1.2 MiB [exact] (312,330 values in 8 weights)',
     'optimizer state: 2.4 MiB [exact] (2 slots per trainable weight, Adam, predicted)']
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Iterable
from typing import Any

from keras_memguard.backends.pipeline import dtype_bytes
from keras_memguard.estimate.parts import EstimatePart, Method

__all__ = [
    "GRADIENTS",
    "OPTIMIZER_STATE",
    "RUNTIME_OVERHEAD",
    "VARIABLES",
    "has_convolution",
    "model_parts",
    "optimizer_slots",
    "variables_bytes",
]

VARIABLES = "variables"
OPTIMIZER_STATE = "optimizer state"
GRADIENTS = "gradients"
RUNTIME_OVERHEAD = "runtime overhead"

# Slots per trainable weight that each Keras 3 optimizer's ``build`` adds (read from
# keras/src/optimizers/*.py); options that add one more are handled in optimizer_slots.
_SLOTS = {
    "Adam": 2,  # momentums, velocities (+1 with amsgrad)
    "AdamW": 2,
    "Nadam": 2,
    "Adamax": 2,
    "Lamb": 2,
    "Ftrl": 2,  # accumulators, linears
    "Adadelta": 2,  # accumulated gradients, accumulated deltas
    "Adagrad": 1,
    "Lion": 1,
    "RMSprop": 1,  # velocities (+1 with momentum, +1 centered)
    "SGD": 0,  # +1 with momentum
}

_cache: weakref.WeakKeyDictionary[Any, tuple[Any, tuple[EstimatePart, ...]]] = (
    weakref.WeakKeyDictionary()
)


def variables_bytes(variables: Iterable[Any]) -> tuple[int, int]:
    """``(bytes, values)`` of variables, from their shapes and dtypes."""
    total = count = 0
    for variable in variables:
        values = math.prod(int(d) for d in variable.shape)
        total += values * (dtype_bytes(variable.dtype) or 4)
        count += values
    return total, count


def optimizer_slots(optimizer: Any) -> tuple[int | None, str]:
    """Slots per trainable weight an unbuilt optimizer will add, and how that is known.

    ``None`` (with the reason) for a class this table does not know.
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    name = type(optimizer).__name__
    base = next(
        (_SLOTS[cls.__name__] for cls in type(optimizer).__mro__ if cls.__name__ in _SLOTS), None
    )
    if base is None:
        return None, (
            f"{name} is not one of the optimizers whose slots are known "
            f"({', '.join(sorted(_SLOTS))}); build it (model.optimizer.build("
            "model.trainable_variables)) to count its state exactly"
        )
    slots, why = base, [name]
    extras = {
        "amsgrad": bool(getattr(optimizer, "amsgrad", False)),
        "momentum": name in ("SGD", "RMSprop") and bool(getattr(optimizer, "momentum", 0)),
        "centered": bool(getattr(optimizer, "centered", False)),
        "use_ema": bool(getattr(optimizer, "use_ema", False)),
        "gradient_accumulation_steps": bool(
            getattr(optimizer, "gradient_accumulation_steps", None)
        ),
    }
    for option, on in extras.items():
        if on:
            slots += 1
            why.append(f"+1 for {option}")
    return slots, ", ".join(why)


def _where(variables: list[Any]) -> str:
    """``"device"`` when the first variable lives on a GPU (or TPU), else ``"host"``."""
    if not variables:
        return "host"
    value = getattr(variables[0], "value", variables[0])
    try:
        device = getattr(value, "device", None)
        if callable(getattr(value, "devices", None)):  # a JAX array
            device = next(iter(value.devices()))
        text = str(getattr(device, "platform", None) or getattr(device, "type", None) or device)
    except Exception:
        return "host"
    return "device" if re.search(r"gpu|cuda|tpu|rocm|mps", text, re.IGNORECASE) else "host"


def _optimizer_part(model: Any, trainable: list[Any], where: str) -> EstimatePart:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return EstimatePart(
            OPTIMIZER_STATE, None, Method.UNKNOWN, "the model is not compiled", where=where
        )
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if getattr(inner, "built", False):
        size, _ = variables_bytes(optimizer.variables)
        detail = f"{len(optimizer.variables)} variables of the built {type(inner).__name__}"
        return EstimatePart(OPTIMIZER_STATE, size, Method.EXACT, detail, where=where)
    slots, why = optimizer_slots(optimizer)
    if slots is None:
        return EstimatePart(OPTIMIZER_STATE, None, Method.UNKNOWN, why, where=where)
    size, _ = variables_bytes(trainable)
    detail = f"{slots} slot{'s' if slots != 1 else ''} per trainable weight ({why}), predicted"
    return EstimatePart(OPTIMIZER_STATE, slots * size, Method.EXACT, detail, where=where)


def _key(model: Any) -> Any:
    """What, changed, makes cached parts stale: the weights and the optimizer's state."""
    optimizer = getattr(model, "optimizer", None)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return (
        tuple(id(v) for v in model.weights),
        id(optimizer),
        bool(getattr(inner, "built", False)),
        len(getattr(optimizer, "variables", ()) or ()),
    )


def model_parts(model: Any) -> tuple[EstimatePart, ...]:
    """The variables, optimizer state, gradients and runtime-overhead parts of ``model``.

    Never raises for a built model: a part it cannot count is unknown with the reason.
    An unbuilt model (no weights yet) gives unknown parts saying so.

    Example:
        >>> sum(part.bytes or 0 for part in model_parts(model))
        4915200
    """
    try:
        key = _key(model)
        cached = _cache.get(model)
        if cached is not None and cached[0] == key:
            return cached[1]
    except TypeError:  # not weak-referenceable: count every time
        key = None
    parts = _count(model)
    if key is not None:
        _cache[model] = (key, parts)
    return parts


# Keras's convolution layers (keras.layers), for the runtime's convolution figure.
_CONVOLUTIONS = (
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
)


def has_convolution(model: Any) -> bool:
    """Whether ``model`` (or a model nested in it) has a Keras convolution layer.

    Example:
        >>> has_convolution(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)]))
        True
    """
    import keras

    kinds = tuple(getattr(keras.layers, name) for name in _CONVOLUTIONS)
    stack = list(getattr(model, "layers", None) or ())
    while stack:
        layer = stack.pop()
        if isinstance(layer, kinds):
            return True
        stack.extend(getattr(layer, "layers", None) or ())
    return False


def _overhead(where: str, model: Any = None) -> EstimatePart:
    """The runtime's first-fit memory on CPU (measured per framework version), else unknown."""
    from keras_memguard.backends.step import first_fit_runtime

    convolution = model is not None and has_convolution(model)
    figure = first_fit_runtime(convolution) if where == "host" else None
    if figure is None:
        why = (
            "the framework's own memory (kernels, allocator pools, workspaces) is not "
            "predicted from the model here; calibration measures it"
        )
        return EstimatePart(RUNTIME_OVERHEAD, None, Method.UNKNOWN, why)
    size, version = figure
    kind = "convolutional model" if convolution and figure != first_fit_runtime() else "model"
    detail = (
        f"the framework's memory at a process's first fit on CPU, measured once with "
        f"{version} for a tiny {kind} (not this one); calibration measures it for this one"
    )
    return EstimatePart(RUNTIME_OVERHEAD, size, Method.MEASURED, detail)


def _count(model: Any) -> tuple[EstimatePart, ...]:
    weights = list(model.weights)
    if not getattr(model, "built", False) or not weights:
        overhead = _overhead("device")  # unknown: nothing is known of an unbuilt model
        why = "the model is not built yet: call model.build(input_shape) or fit first"
        return (
            EstimatePart(VARIABLES, None, Method.UNKNOWN, why),
            EstimatePart(OPTIMIZER_STATE, None, Method.UNKNOWN, why),
            EstimatePart(GRADIENTS, None, Method.UNKNOWN, why),
            overhead,
        )
    trainable = list(model.trainable_weights)
    where = _where(weights)
    size, values = variables_bytes(weights)
    frozen = len(weights) - len(trainable)
    detail = f"{values:,} values in {len(weights)} weights" + (
        f", {frozen} not trainable" if frozen else ""
    )
    grads, grad_values = variables_bytes(trainable)
    overhead = _overhead(where, model)
    return (
        EstimatePart(VARIABLES, size, Method.EXACT, detail, where=where),
        _optimizer_part(model, trainable, where),
        EstimatePart(
            GRADIENTS,
            grads,
            Method.EXACT,
            f"one per trainable weight: {grad_values:,} values",
            where=where,
        ),
        overhead,
    )
