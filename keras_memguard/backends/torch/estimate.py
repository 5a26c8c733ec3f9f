"""The PyTorch training step's memory from a trace under fake tensors, without running it.

Keras's ``train_step(data)`` is run once under ``FakeTensorMode(allow_non_fake_inputs=
True)`` with ``MemTracker`` counting every tensor it creates: fake tensors carry shapes,
dtypes and devices but no storage, so nothing is allocated, and the real parameters and
optimizer variables enter only as inputs (their in-place updates land on fake copies;
the gradients the trace leaves on them are removed afterwards). The peak of the
activations, temporaries and other tensors the tracker saw is the step's temporaries.

``MemTracker`` (``torch.distributed._tools.mem_tracker``) and ``FakeTensorMode``
(``torch._subclasses.fake_tensor``) are private (checked: torch 2.14.1); each is reached
through one function here that fails soft.

Example:
    >>> from keras_memguard.backends.step import BatchSpec
    >>> at = step_estimator(model, (BatchSpec((64,), "float32"), BatchSpec((), "int64")))
    >>> at(128).method
    'traced'
"""

from __future__ import annotations

from typing import Any

from keras_memguard.backends.step import StepEstimator, StepMemory, batch_structure
from keras_memguard.backends.torch.compat import FAKE_TENSOR_MODE, MEM_TRACKER
from keras_memguard.compat import resolve
from keras_memguard.errors import warn_once

__all__ = [
    "CHECKED",
    "FIRST_FIT_RUNTIME",
    "fake_tensor_mode",
    "mem_tracker",
    "step_estimator",
    "step_method",
]

CHECKED = "torch 2.14.1"
# The runtime's own memory at a process's first fit on CPU (the autograd engine, the
# ATen/oneDNN thread pool), which no model part counts: peak RSS during a 3-step fit of an
# 8-16-2 dense model at batch 8 minus RSS before it, the lower of two fresh processes
# (torch 2.14.1, Keras 3.15.1).
FIRST_FIT_RUNTIME = (6 * 2**20, "torch 2.14.1")
# MemTracker's categories (_MemRefType values) that a step creates and frees.
_TRANSIENT = ("Activation", "Temp", "Other")


def _unavailable(cause: str, what: str, err: Exception) -> None:
    warn_once(
        cause,
        f"keras-memguard cannot use PyTorch's private {what} (checked with {CHECKED}): "
        f"{type(err).__name__}: {err}; the step's temporaries are unknown",
    )


def fake_tensor_mode() -> Any:
    """A new ``FakeTensorMode(allow_non_fake_inputs=True)`` (private), or ``None``."""
    try:
        mode = resolve(FAKE_TENSOR_MODE)
        return None if mode is None else mode(allow_non_fake_inputs=True)
    except Exception as err:
        _unavailable("torch-fake-tensor-mode", "FakeTensorMode", err)
        return None


def mem_tracker() -> Any:
    """A new ``torch.distributed._tools.mem_tracker.MemTracker`` (private), or ``None``."""
    try:
        tracker = resolve(MEM_TRACKER)
        return None if tracker is None else tracker()
    except Exception as err:
        _unavailable("torch-mem-tracker", "MemTracker", err)
        return None


def _kind(kind: Any) -> str:
    return str(getattr(kind, "value", kind))


def _peak_transient(tracker: Any) -> tuple[int, str]:
    """The tracker's peak of step-created tensors, and its device type."""
    best, device = 0, "cpu"
    for dev, snapshot in tracker.get_tracker_snapshot("peak").items():
        total = sum(int(n) for kind, n in snapshot.items() if _kind(kind) in _TRANSIENT)
        if total > best:
            best, device = total, str(getattr(dev, "type", dev))
    return best, device


def step_method(model: Any) -> str:
    """How the step's figure is obtained, known without tracing: ``"traced"``."""
    return "traced"


def step_estimator(model: Any, spec: Any) -> StepEstimator:
    """``f(batch_size) -> StepMemory`` for a built, compiled ``model`` (see ``backends.step``)."""
    import torch

    weights = list(model.trainable_variables)
    # where Keras put the model (its get_device() is private): its first variable's device
    device = weights[0].value.device if weights else torch.device("cpu")

    def empty(shape: tuple[int, ...], dtype: str) -> Any:
        return torch.empty(shape, dtype=getattr(torch, dtype), device=device)

    def at(batch_size: int) -> StepMemory:
        mode, tracker = fake_tensor_mode(), mem_tracker()
        if mode is None or tracker is None:
            return StepMemory.unknown(f"PyTorch's fake tensors are unavailable ({CHECKED} checked)")
        try:
            with mode:
                data = batch_structure(spec, batch_size, empty)
                tracker.track_external(model)
                with tracker:
                    model.train_step(data)
        except Exception as err:
            return StepMemory.unknown(f"cannot trace train_step: {type(err).__name__}: {err}")
        finally:
            for variable in weights:  # the trace leaves fake gradients on the parameters
                variable.value.grad = None
        peak, platform = _peak_transient(tracker)
        return StepMemory(
            temporaries=peak,
            method="traced",
            detail="MemTracker peak of activations and temporaries under FakeTensorMode",
            platform="gpu" if platform == "cuda" else platform,
        )

    return at
