"""PyTorch's private names that keras-memguard relies on (``torch._C``, ``torch._dynamo``).

Example:
    >>> has_context = resolve(HAS_PRIMARY_CONTEXT, loaded_only=True)
"""

from __future__ import annotations

from keras_memguard.compat import PrivateSymbol

__all__ = [
    "DYNAMO_COUNTERS",
    "DYNAMO_RESET",
    "FAKE_TENSOR_MODE",
    "HAS_PRIMARY_CONTEXT",
    "MEM_TRACKER",
    "SYMBOLS",
]

CHECKED = "torch 2.1-2.14.1"

HAS_PRIMARY_CONTEXT = PrivateSymbol(
    "torch._C",
    "_cuda_hasPrimaryContext",
    CHECKED,
    "keras-memguard reports no per-GPU limit or UUID under PyTorch",
)
"""Whether torch holds a CUDA context on a GPU (asking for properties would create one)."""

DYNAMO_RESET = PrivateSymbol(
    "torch._dynamo",
    "reset",
    CHECKED,
    "release_memory cannot reset torch.compile's caches",
)
"""Resets ``torch.compile``'s caches (documented, but in a private module)."""

FAKE_TENSOR_MODE = PrivateSymbol(
    "torch._subclasses.fake_tensor",
    "FakeTensorMode",
    CHECKED,
    "the pre-flight reports the step's temporaries as unknown under PyTorch",
)
"""Tensors without storage: the step is traced without allocating (issue #25)."""

MEM_TRACKER = PrivateSymbol(
    "torch.distributed._tools.mem_tracker",
    "MemTracker",
    CHECKED,
    "the pre-flight reports the step's temporaries as unknown under PyTorch",
)
"""Counts a traced step's activations and temporaries by category (issue #25)."""

DYNAMO_COUNTERS = PrivateSymbol(
    "torch._dynamo.utils",
    "counters",
    CHECKED,
    "the growth classifier counts no torch.compile graphs",
)
"""TorchDynamo's counters; ``["stats"]["unique_graphs"]`` counts the graphs it compiled."""

SYMBOLS = (HAS_PRIMARY_CONTEXT, DYNAMO_RESET, DYNAMO_COUNTERS, FAKE_TENSOR_MODE, MEM_TRACKER)
