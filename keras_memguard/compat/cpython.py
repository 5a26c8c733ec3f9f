"""CPython's private C API that leak forensics relies on (CPython 3.11 only).

``tracemalloc.get_object_traceback`` misses objects whose type keeps its ``__dict__``
before the object (every Python class on CPython 3.11, hence ``torch.Tensor`` and
TensorFlow's ``EagerTensor``): it looks the block up at the object's address, and the
block starts earlier. :func:`traceback_at_block_start` looks it up at the real start
through ``_PyTraceMalloc_GetTraceback``, with the 3.11 object layout's offset. 3.12
fixed ``get_object_traceback``, so nothing here runs there.

Example:
    >>> raw = traceback_at_block_start(tensor)    # ((file, line), ...) or None
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from keras_memguard.compat import PrivateSymbol, resolve

__all__ = ["GET_TRACEBACK", "SYMBOLS", "needs_block_start", "traceback_at_block_start"]

CHECKED = "CPython 3.11.0-3.11.14"

GET_TRACEBACK = PrivateSymbol(
    "ctypes",
    "pythonapi._PyTraceMalloc_GetTraceback",
    CHECKED,
    "leak reports may miss where some framework tensors were allocated",
)
MANAGED_DICT = 1 << 4  # Py_TPFLAGS_MANAGED_DICT (CPython 3.11)
# The block starts with the GC header (2 pointers) and the dict/weakref slots (2 more).
HEADER_POINTERS = 4

SYMBOLS = (GET_TRACEBACK,) if sys.version_info[:2] == (3, 11) else ()
_function: Any = None


def needs_block_start(obj: object) -> bool:
    """Whether ``obj``'s allocation is found only at its block's start (CPython 3.11)."""
    return (
        sys.version_info[:2] == (3, 11)
        and sys.implementation.name == "cpython"
        and bool(type(obj).__flags__ & MANAGED_DICT)
    )


def traceback_at_block_start(obj: object) -> Any:
    """``tracemalloc``'s raw traceback of ``obj``'s block (``None`` if not traced)."""
    global _function
    if _function is None:
        function = resolve(GET_TRACEBACK)
        if function is None:
            return None
        function.restype = ctypes.py_object
        function.argtypes = [ctypes.c_uint, ctypes.c_size_t]
        _function = function
    return _function(0, id(obj) - HEADER_POINTERS * ctypes.sizeof(ctypes.c_void_p))
