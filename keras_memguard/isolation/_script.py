"""Which ``__main__`` calls ``run_isolated``: a guarded script the child may run again.

``multiprocessing``'s spawn runs the script again as ``__mp_main__`` in each child; its
``if __name__ == "__main__":`` guard keeps the script's own work from running twice. A
child of ``run_isolated`` may do the same only when the call itself runs under that guard
(else the child would start the phase again): the script's syntax tree says where the
guard is and the stack says which line of the script's module level is running.

Example:
    >>> main_script()           # in `python train.py`, under the guard
    MainScript(path='/home/me/train.py', module=None, names=frozenset({'train', ...}))
"""

from __future__ import annotations

import ast
import os
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["MainScript", "main_script"]

# (path, mtime) -> (line ranges of the `if __name__ == "__main__":` blocks, names bound
# at module level outside them)
_layouts: dict[tuple[str, float], tuple[tuple[tuple[int, int], ...], frozenset[str]]] = {}


@dataclass(frozen=True)
class MainScript:
    """A guarded script the child may run as ``__mp_main__``, as spawn does.

    Attributes:
        path: the script's absolute path.
        module: its name when run with ``python -m``, else ``None``.
        names: what it binds at module level outside ``if __name__ == "__main__":``.
    """

    path: str
    module: str | None
    names: frozenset[str]


def _is_main_guard(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = (test.left, test.comparators[0])
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


def _bound(body: list[ast.stmt], names: set[str], guards: list[tuple[int, int]]) -> None:
    """Collects the names ``body`` binds outside the guard (into ``if``/``try``/``with``
    blocks, not into functions) and the guard blocks' line ranges."""
    for node in body:
        if isinstance(node, ast.If) and _is_main_guard(node.test):
            guards.append((node.lineno, node.end_lineno or node.lineno))
            _bound(node.orelse, names, guards)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody"):
                _bound(getattr(node, field, []), names, guards)
            for handler in getattr(node, "handlers", []):
                _bound(handler.body, names, guards)


def _layout(path: str) -> tuple[tuple[tuple[int, int], ...], frozenset[str]] | None:
    try:
        key = (path, os.stat(path).st_mtime)
        if key not in _layouts:
            with open(path, "rb") as f:
                tree = ast.parse(f.read(), path)
            names: set[str] = set()
            guards: list[tuple[int, int]] = []
            _bound(tree.body, names, guards)
            _layouts[key] = (tuple(guards), frozenset(names))
        return _layouts[key]
    except (OSError, SyntaxError, ValueError):
        return None


def _module_frames() -> Iterator[types.FrameType]:
    """The frames of this thread, then of the main thread (a call from a thread)."""
    tops = [sys._getframe(1)]
    main = sys._current_frames().get(threading.main_thread().ident or -1)
    if main is not None:
        tops.append(main)
    for top in tops:
        frame: types.FrameType | None = top
        while frame is not None:
            yield frame
            frame = frame.f_back


def main_script() -> MainScript | None:
    """The driver's script when the child may run it as ``__mp_main__``: a file whose
    module level is now running this call from inside ``if __name__ == "__main__":``.
    ``None`` for a notebook, ``python -c``, a package's ``__main__`` (spawn does not run
    those again either) and an unguarded call.

    Example:
        >>> main_script()           # in `python train.py`, under the guard
        MainScript(path='/home/me/train.py', module=None, names=frozenset({'train', ...}))
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str):
        return None
    module = getattr(getattr(main, "__spec__", None), "name", None)
    if module is not None and (module == "__main__" or module.endswith(".__main__")):
        return None
    path = os.path.abspath(path)
    layout = _layout(path)
    if layout is None:
        return None
    guards, names = layout
    for frame in _module_frames():
        code = frame.f_code
        if code.co_name == "<module>" and os.path.abspath(code.co_filename) == path:
            line = frame.f_lineno or 0
            if any(first <= line <= last for first, last in guards):
                return MainScript(path, module, names)
            return None
    return None
