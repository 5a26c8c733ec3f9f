"""Where an allocation was made: the user's frame, its function, and ``tracemalloc``'s view.

Leak forensics (:mod:`keras_memguard.guard.leaks`) names the innermost frame outside
Python, the frameworks, NumPy and this package (:func:`user_frame`); this module
tells those frames apart and finds an object's allocation (:func:`object_traceback`).

Example:
    >>> is_library_file(keras.__file__), is_library_file("train.py")
    (True, False)
"""

from __future__ import annotations

import ast
import importlib.util
import linecache
import os
import sysconfig
import tracemalloc
from collections.abc import Iterable

from keras_memguard.compat import cpython

__all__ = ["LIBRARY_PACKAGES", "function_at", "is_library_file", "object_traceback", "user_frame"]

# Frames in these packages (and the standard library) are never named as a leak's site.
LIBRARY_PACKAGES = (
    "keras",
    "tf_keras",
    "tensorflow",
    "tensorboard",
    "jax",
    "jaxlib",
    "torch",
    "numpy",
    "optree",
    "ml_dtypes",
    "absl",
    "keras_memguard",
)


def _library_roots() -> tuple[str, ...]:
    roots = []
    for name in LIBRARY_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            roots.append(os.path.join(os.path.realpath(location), ""))
    return tuple(roots)


def _stdlib_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(
        {os.path.join(os.path.realpath(paths[key]), "") for key in ("stdlib", "platstdlib")}
    )


_ROOTS: tuple[tuple[str, ...], tuple[str, ...]] | None = None
_IS_LIBRARY: dict[str, bool] = {}


def is_library_file(filename: str) -> bool:
    """Whether a frame in ``filename`` belongs to Python, a framework, NumPy or this package.

    Example:
        >>> is_library_file(keras.__file__), is_library_file("train.py")
        (True, False)
    """
    known = _IS_LIBRARY.get(filename)
    if known is not None:
        return known
    global _ROOTS
    if _ROOTS is None:
        _ROOTS = (_library_roots(), _stdlib_roots())
    libraries, stdlib = _ROOTS
    if filename.startswith("<"):
        result = filename.startswith(("<frozen", "<__array_function__"))
    else:
        path = os.path.realpath(filename)
        parts = path.split(os.sep)
        result = path.startswith(libraries) or (
            path.startswith(stdlib)
            and "site-packages" not in parts
            and "dist-packages" not in parts
        )
    _IS_LIBRARY[filename] = result
    return result


def user_frame(frames: Iterable[tracemalloc.Frame]) -> tuple[tracemalloc.Frame, bool] | None:
    """The innermost frame outside the libraries, and ``True``; else the outermost, ``False``.

    ``frames`` run from the oldest to the most recent, as in ``tracemalloc.Traceback``.
    """
    frames = list(frames)
    for frame in reversed(frames):
        if not is_library_file(frame.filename):
            return frame, True
    return (frames[0], False) if frames else None


_FUNCTIONS: dict[str, list[tuple[int, int, str]]] = {}


def function_at(filename: str, lineno: int) -> str:
    """The qualified name of the innermost function around ``filename:lineno``."""
    spans = _FUNCTIONS.get(filename)
    if spans is None:
        spans = []
        try:
            tree = ast.parse("".join(linecache.getlines(filename)))
        except (SyntaxError, ValueError):
            tree = None

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = prefix + child.name
                    if isinstance(child, ast.ClassDef):
                        visit(child, name + ".")
                    else:  # named as __qualname__ names it
                        spans.append((child.lineno, child.end_lineno or child.lineno, name))
                        visit(child, name + ".<locals>.")
                else:
                    visit(child, prefix)

        if tree is not None:
            visit(tree, "")
        _FUNCTIONS[filename] = spans
    inside = [s for s in spans if s[0] <= lineno <= s[1]]
    return max(inside)[2] if inside else "<module>"


def object_traceback(obj: object) -> tracemalloc.Traceback | None:
    """Where ``obj`` was allocated, if that happened while ``tracemalloc`` was tracing.

    ``tracemalloc.get_object_traceback`` misses objects whose type keeps its ``__dict__``
    before the object (every Python class on CPython 3.11, hence ``torch.Tensor`` and
    TensorFlow's ``EagerTensor``); for those the block is looked up at its real start
    (:mod:`keras_memguard.compat.cpython`).
    """
    found = tracemalloc.get_object_traceback(obj)
    if found is not None or not cpython.needs_block_start(obj):
        return found
    raw = cpython.traceback_at_block_start(obj)
    return None if raw is None else tracemalloc.Traceback(raw)
