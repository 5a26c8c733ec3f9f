"""PyTorch's private names that keras-memguard relies on (``torch._C``, ``torch._dynamo``).

Example:
    >>> has_context = resolve(HAS_PRIMARY_CONTEXT, loaded_only=True)
"""

from __future__ import annotations

from keras_memguard.compat import PrivateSymbol

__all__ = [
    "ATTACH_OOM_OBSERVER",
    "DYNAMO_COUNTERS",
    "DYNAMO_RESET",
    "FAKE_TENSOR_MODE",
    "HAS_PRIMARY_CONTEXT",
    "MEMORY_SNAPSHOT",
    "MEM_TRACKER",
    "MEM_TRACKER_UPDATE",
    "RECORD_MEMORY_HISTORY",
    "SEGMENT_PLOT",
    "SYMBOLS",
    "TRACE_PLOT",
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

MEM_TRACKER_UPDATE = PrivateSymbol(
    "torch.distributed._tools.mem_tracker",
    "MemTracker._update_snap",
    CHECKED,
    "the estimate leaves out what glibc's heap keeps beyond a step's live tensors",
)
"""Called with each storage the tracker sees made (``ADD``), resized or freed (``DEL``)."""

DYNAMO_COUNTERS = PrivateSymbol(
    "torch._dynamo.utils",
    "counters",
    CHECKED,
    "the growth classifier counts no torch.compile graphs",
)
"""TorchDynamo's counters; ``["stats"]["unique_graphs"]`` counts the graphs it compiled."""

# issue #28: the memory snapshot a halt keeps (opens at https://pytorch.org/memory_viz)
_NO_SNAPSHOT = "a halt keeps no PyTorch memory snapshot"
RECORD_MEMORY_HISTORY = PrivateSymbol(
    "torch.cuda.memory", "_record_memory_history", CHECKED, _NO_SNAPSHOT
)
"""Switches the caching allocator's history of allocations and frees on (and off)."""
MEMORY_SNAPSHOT = PrivateSymbol("torch.cuda.memory", "_snapshot", CHECKED, _NO_SNAPSHOT)
"""The allocator's segments, blocks and recorded history, as a picklable dict."""
ATTACH_OOM_OBSERVER = PrivateSymbol(
    "torch._C",
    "_cuda_attach_out_of_memory_observer",
    CHECKED,
    "a CUDA out-of-memory error leaves no memory snapshot",
)
"""Calls a function at a CUDA OOM, before the error unwinds (Composer's OOMObserver)."""
_NO_PLOTS = "a halt keeps the PyTorch memory snapshot without its HTML plots"
TRACE_PLOT = PrivateSymbol("torch.cuda._memory_viz", "trace_plot", CHECKED, _NO_PLOTS)
"""A snapshot's allocations over time as a self-contained HTML page."""
SEGMENT_PLOT = PrivateSymbol("torch.cuda._memory_viz", "segment_plot", CHECKED, _NO_PLOTS)
"""A snapshot's segments and blocks as a self-contained HTML page."""

SYMBOLS = (
    HAS_PRIMARY_CONTEXT,
    DYNAMO_RESET,
    DYNAMO_COUNTERS,
    FAKE_TENSOR_MODE,
    MEM_TRACKER,
    MEM_TRACKER_UPDATE,
    RECORD_MEMORY_HISTORY,
    MEMORY_SNAPSHOT,
    ATTACH_OOM_OBSERVER,
    TRACE_PLOT,
    SEGMENT_PLOT,
)
