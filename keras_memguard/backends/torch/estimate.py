"""The PyTorch training step's memory from a trace under fake tensors, without running it.

Keras's ``train_step(data)`` is run once under ``FakeTensorMode(allow_non_fake_inputs=
True)`` with ``MemTracker`` counting every tensor it creates: fake tensors carry shapes,
dtypes and devices but no storage, so nothing is allocated, and the real parameters and
optimizer variables enter only as inputs (their in-place updates land on fake copies;
the gradients the trace leaves on them are removed afterwards). The peak of the
activations, temporaries and other tensors the tracker saw is the step's temporaries.

On CPU under glibc, the process holds more than the live tensors: PyTorch takes each
tensor from ``posix_memalign`` and glibc keeps what a step frees in its heap, in blocks
the next tensor of the same size does not fit. The trace's allocations and frees, in
order, are replayed through those rules (``backends/glibc_heap.py``) and what the heap
reaches beyond the live tensors is added (in real fits of the dense and convolutional
models of docs/estimate.md, glibc's heap reached 1.25-1.75 times the live tensors' peak).

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

import platform
from typing import Any

from keras_memguard.backends.glibc_heap import Event, heap_peak, live_peak
from keras_memguard.backends.step import StepEstimator, StepMemory, batch_structure
from keras_memguard.backends.torch.compat import FAKE_TENSOR_MODE, MEM_TRACKER, MEM_TRACKER_UPDATE
from keras_memguard.compat import resolve
from keras_memguard.errors import warn_once

__all__ = [
    "CHECKED",
    "FIRST_FIT_RUNTIME",
    "FIRST_FIT_RUNTIME_CONVOLUTION",
    "fake_tensor_mode",
    "heap_retention",
    "mem_tracker",
    "step_estimator",
    "step_method",
]

CHECKED = "torch 2.14.1"
# The runtime's own memory at a process's first fit on CPU, which no model part counts:
# peak RSS during a 3-step fit of an 8-16-2 dense model at batch 8 minus RSS before it,
# the lower of two fresh processes (torch 2.14.1, Keras 3.15.1). Nearly all of it is
# libtorch_cpu.so's code, paged in at the kernels' first call (RssFile: 6.7 of 6.8 MiB).
FIRST_FIT_RUNTIME = (6 * 2**20, "torch 2.14.1")
# The same with a convolution (a 4-filter 3x3 Conv2D on 8x8x3, then global average
# pooling and a dense layer): oneDNN's convolution kernels page in more of libtorch_cpu.so
# (RssFile: 14.1 of 14.3 MiB in two fresh processes; with a max pooling too, the same).
FIRST_FIT_RUNTIME_CONVOLUTION = (14 * 2**20, "torch 2.14.1")
# MemTracker's categories (_MemRefType values) that a step creates and frees.
_TRANSIENT = ("Activation", "Temp", "Other")
# Its categories of what exists before the step (the model's and the optimizer's state).
_STATE = ("Parameter", "Buffer", "Optstate")


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


def _recording(tracker_class: Any, update: Any) -> Any:
    """``tracker_class`` whose instances also record the CPU storages the step makes and frees.

    ``tracker.allocations`` holds, in order, ``(key, bytes)`` for each new storage and
    ``(key, None)`` for each freed one (``glibc_heap.Event``s), leaving out the model's
    parameters and the optimizer's state (they exist before the step); ``None`` once
    a record failed. ``update`` is the tracker's own bookkeeping, called first.
    """

    def record(self: Any, u_type: Any, winfo: Any, *args: Any, **kwargs: Any) -> None:
        update(self, u_type, winfo, *args, **kwargs)
        try:
            kind, key = str(u_type.name), id(winfo)
            if winfo.device.type != "cpu" or _kind(winfo.reftype) in _STATE:
                return
            if kind in ("DEL", "SIZE"):
                self.allocations.append((key, None))
            if kind in ("ADD", "SIZE"):
                self.allocations.append((key, int(winfo.mem_consumed)))
        except Exception:  # another torch: the heap is left out, the trace goes on
            self.allocations = None

    method = MEM_TRACKER_UPDATE.attribute.rsplit(".", 1)[-1]
    return type("RecordingMemTracker", (tracker_class,), {method: record})


def mem_tracker() -> Any:
    """A new ``torch.distributed._tools.mem_tracker.MemTracker`` (private), or ``None``.

    It also records the CPU storages the step makes and frees, in order (``allocations``;
    ``None`` where this torch does not report them).
    """
    try:
        tracker_class = resolve(MEM_TRACKER)
        if tracker_class is None:
            return None
        update = resolve(MEM_TRACKER_UPDATE)
        if update is None:
            tracker = tracker_class()
            tracker.allocations = None
            return tracker
        tracker = _recording(tracker_class, update)()
        tracker.allocations = []
        return tracker
    except Exception as err:
        _unavailable("torch-mem-tracker", "MemTracker", err)
        return None


def heap_retention(allocations: list[Event] | None) -> tuple[int, str]:
    """What glibc's heap holds beyond the live tensors for a CPU step, and how it was found.

    ``(0, why)`` where the C library is not glibc (the rules replayed are glibc's) or the
    trace's allocations are not known (``None``).

    Example:
        >>> heap_retention(tracker.allocations)
        (38797312, '+ 38,797,312 B glibc's heap holds beyond the live tensors (...)')
    """
    if allocations is None:
        return (
            0,
            f"(the C heap's retention is left out: MemTracker's records changed after {CHECKED})",
        )
    libc = platform.libc_ver()[0]
    if libc != "glibc":
        return 0, f"(the C heap's retention is modelled for glibc, not {libc or 'this libc'})"
    extra = max(0, heap_peak(allocations) - live_peak(allocations))
    count = sum(1 for _, size in allocations if size is not None)
    return extra, (
        f"+ {extra:,} B glibc's heap holds beyond the live tensors ({count} allocations "
        "replayed: a freed block does not fit the next tensor of its size, blocks merge "
        "only at the step's end, the mmap threshold rises to the largest freed block)"
    )


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


def _drop_gradients(weights: list[Any]) -> None:
    """Sets the parameters' ``grad`` to ``None``, as Keras's step does (``zero_grad``)."""
    for variable in weights:
        variable.value.grad = None


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
        _drop_gradients(weights)  # a previous fit's: the trace would see them converted
        try:
            with mode:
                data = batch_structure(spec, batch_size, empty)
                tracker.track_external(model)
                with tracker:
                    model.train_step(data)
        except Exception as err:
            return StepMemory.unknown(f"cannot trace train_step: {type(err).__name__}: {err}")
        finally:
            _drop_gradients(weights)  # the trace leaves fake gradients on the parameters
        peak, device_type = _peak_transient(tracker)
        detail = "MemTracker peak of activations and temporaries under FakeTensorMode"
        extra = 0
        if device_type == "cpu":
            extra, why = heap_retention(tracker.allocations)
            detail += f" {why}"
        return StepMemory(
            temporaries=peak + extra,
            method="traced",
            detail=detail,
            platform="gpu" if device_type == "cuda" else device_type,
        )

    return at
