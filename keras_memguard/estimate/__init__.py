"""The pre-flight estimate of a ``fit``'s peak memory, in parts a user can act on.

A stage of its own between ``memory_snapshot`` and ``guard`` (the guard's pre-flight
uses it); the per-framework pieces live in ``backends/<framework>/estimate.py``.
"""

from keras_memguard.estimate.fit import estimate_fit_memory
from keras_memguard.estimate.parts import EstimatePart, MemoryEstimate, Method

__all__ = ["EstimatePart", "MemoryEstimate", "Method", "estimate_fit_memory"]
