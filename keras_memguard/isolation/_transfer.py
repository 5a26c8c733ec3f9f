"""What travels to a ``run_isolated`` child, and the ``__main__`` the child rebuilds.

``multiprocessing``'s spawn rebuilds a guarded script's ``__main__`` in every child by
running the script again as ``__mp_main__`` (``multiprocessing/spawn.py``,
``_fixup_main_from_path``); functions from ``__main__`` then travel by reference. The
child of ``run_isolated`` does the same where it is safe, and takes by value what no
re-run can define:

- **A guarded script** (the call runs under ``if __name__ == "__main__":``): functions
  and classes the script defines at module level, outside the guard, travel by
  reference, and the child runs the script as ``__mp_main__`` before it unpickles them.
  No cloudpickle is needed.
- **An unguarded script, a notebook, code run by ``exec``**: running the script again
  would start the phase again, so the functions and classes of ``__main__`` that the
  phase reaches travel by value (cloudpickle) and the child puts them into its own
  ``__main__``, where ``pickle`` finds them by name.
- **Lambdas and nested functions**: by value (cloudpickle).

The child's ``__main__`` names :mod:`keras_memguard.isolation._spawn_main` as its
``__spec__``, and ``MEMGUARD_ISOLATED_MAIN`` describes how it was built: a process the
phase spawns (a ``Pool``, a ``ProcessPoolExecutor``, ``PyDataset`` workers) runs that
module as its own ``__mp_main__`` and rebuilds the same ``__main__``; forked ones
inherit it.

Example:
    >>> header, payload = pack(train, (64,), {})    # in the driver
    >>> prepare_main(header); fn, args, kwargs = pickle.loads(payload)   # in the child
"""

from __future__ import annotations

import io
import json
import os
import pickle
import runpy
import sys
import tempfile
import types
from collections.abc import Callable, Mapping
from typing import Any

from keras_memguard.backends.base import cannot_travel
from keras_memguard.errors import MemGuardError, invalid_argument
from keras_memguard.isolation._script import MainScript, main_script

__all__ = [
    "MAIN_ENV",
    "RebuildingMainError",
    "dumps_reply",
    "namespace_file",
    "pack",
    "prepare_main",
    "refuse_while_preparing",
]

MAIN_ENV = "MEMGUARD_ISOLATED_MAIN"
_SPAWN_MAIN = "keras_memguard.isolation._spawn_main"
_MAIN_NAMES = ("__main__", "__mp_main__")
_preparing = False  # this child runs the user's script as __mp_main__ now


class RebuildingMainError(MemGuardError, RuntimeError):
    """``run_isolated`` was called while the script ran again as ``__mp_main__``."""


class _NeedsCloudpickle(Exception):
    """A function or class from ``__main__`` can only travel by value."""


# --- pickling ---------------------------------------------------------------------


def _cloudpickle() -> Any:
    try:
        import cloudpickle
    except ImportError:
        return None
    return cloudpickle


def _lookup(module: Any, qualname: str) -> Any:
    value = module
    for part in qualname.split("."):
        value = getattr(value, part, None)
    return value


def _from_the_script(obj: Any, path: str) -> bool:
    """Whether the script at ``path`` defines ``obj`` (not code run by ``exec`` that
    rebound one of its names)."""
    if isinstance(obj, types.FunctionType):
        return os.path.abspath(obj.__code__.co_filename) == path
    for item in vars(obj).values():  # a class: none of its methods comes from exec
        code = getattr(getattr(item, "__func__", item), "__code__", None)
        name = code.co_filename if code is not None else ""
        if name.startswith("<") and name != "<string>":  # <string>: dataclass, namedtuple
            return False
    return True


class _Rules:
    """``reducer_override`` for functions and classes from ``__main__``.

    Modes: ``"payload"`` (by reference; what the child's ``__main__`` must hold is
    recorded), ``"namespace"`` (those recorded objects by value) and ``"reply"`` (from
    the child to the driver, whose ``__main__`` has them: by reference).
    """

    mode = "payload"
    script: MainScript | None = None
    cloud = False

    def _setup(self, mode: str, script: MainScript | None, cloud: bool) -> None:
        self.mode, self.script, self.cloud = mode, script, cloud
        self.namespace: dict[str, Any] = {}
        self.uses_script = False

    def reducer_override(self, obj: Any) -> Any:
        from_main = isinstance(obj, (types.FunctionType, type)) and obj.__module__ in _MAIN_NAMES
        if from_main and self._by_reference(obj):
            return NotImplemented  # pickle's own save_global
        parent = super()
        return getattr(parent, "reducer_override", lambda _: NotImplemented)(obj)

    def _by_reference(self, obj: Any) -> bool:
        qualname = getattr(obj, "__qualname__", "")
        main = sys.modules.get(obj.__module__)
        if "<" in qualname or main is None or _lookup(main, qualname) is not obj:
            return False  # a lambda, a nested function: by value (cloudpickle)
        if self.mode == "reply":
            return True
        top = qualname.split(".")[0]
        defined = getattr(main, top)
        script = self.script
        if script is not None and top in script.names and _from_the_script(defined, script.path):
            self.uses_script = True  # the child runs the script, which defines it
            return True
        self.namespace[top] = defined
        if not self.cloud:
            raise _NeedsCloudpickle(qualname)
        return self.mode == "payload"


_classes: dict[bool, type] = {}


def _pickler(file: Any, mode: str, script: MainScript | None = None) -> Any:
    cloud = _cloudpickle()
    base = cloud.Pickler if cloud is not None else pickle.Pickler
    key = cloud is not None
    if key not in _classes:
        _classes[key] = type("_MainPickler", (_Rules, base), {})
    pickler = _classes[key](file, protocol=pickle.HIGHEST_PROTOCOL)
    pickler._setup(mode, script, key)
    return pickler


def dumps_reply(value: Any) -> bytes:
    """Pickles a result or an exception for the driver: objects of ``__main__`` by
    reference (the driver has them), others by value where cloudpickle is installed.

    Example:
        >>> pickle.loads(dumps_reply(42))
        42
    """
    buffer = io.BytesIO()
    _pickler(buffer, "reply").dump(value)
    return buffer.getvalue()


def _why_by_value(qualname: str, script: MainScript | None) -> str:
    if script is None:
        where = (
            'the call does not run under `if __name__ == "__main__":` (or it comes from '
            "a notebook, `python -c` or exec), so the child cannot run the script again"
        )
    else:
        where = (
            "the script does not define it at module level outside "
            '`if __name__ == "__main__":` (it is defined inside the guard, or by exec)'
        )
    return (
        f"{qualname} is defined in __main__ and {where}: it can only travel by value, "
        "which needs cloudpickle, a dependency of keras-memguard missing here"
    )


def _cannot_travel(value: Any) -> str | None:
    """Why a value cannot be sent to another process, for the inputs people pass."""
    why = cannot_travel(value)
    if why:
        return why
    if isinstance(value, (types.GeneratorType, types.AsyncGeneratorType)):
        return "an open generator cannot be sent to another process"
    return None


def _check_inputs(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    named = [(f"args[{i}]", v) for i, v in enumerate(args)] + list(kwargs.items())
    for name, value in named:
        inner = list(value.values()) if isinstance(value, dict) else value
        values = list(inner) if isinstance(inner, (list, tuple)) else [value]
        for item in [value, *values]:
            why = _cannot_travel(item)
            if why:
                raise invalid_argument(
                    name,
                    item,
                    "NumPy arrays, or a function (or file path) that builds the dataset "
                    "inside the child",
                    why=why,
                )


def pack(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[bytes | None, bytes]:
    """Pickles ``(fn, args, kwargs)`` for the child, with what its ``__main__`` needs.

    Returns ``(header, payload)``: ``header`` (``None`` when nothing of ``__main__``
    travels) tells :func:`prepare_main` what to run and install before the payload is
    unpickled.

    Raises:
        ValueError: something cannot travel (a ``tf.data.Dataset``, a generator, a lock,
            a function of an unguarded ``__main__`` without cloudpickle); the message
            names it, says why and what to pass instead.

    Example:
        >>> header, payload = pack(pow, (2, 10), {})
    """
    if not callable(fn):
        raise invalid_argument("fn", fn, "a function defined at module level")
    _check_inputs(args, kwargs)
    script = main_script()
    try:
        buffer = io.BytesIO()
        pickler = _pickler(buffer, "payload", script)
        pickler.dump((fn, args, dict(kwargs)))
        payload = buffer.getvalue()
        namespace = None
        if pickler.namespace:
            spare = io.BytesIO()
            by_value = _pickler(spare, "namespace", script)
            by_value.dump(pickler.namespace)
            by_value.dump(by_value.namespace)  # all it reached, from the memo: same objects
            pickler.uses_script = pickler.uses_script or by_value.uses_script
            namespace = spare.getvalue()
    except _NeedsCloudpickle as err:
        raise invalid_argument(
            "fn",
            fn,
            "a function the child can define: one defined at module level of a script "
            'whose call runs under `if __name__ == "__main__":`, or in a module; or '
            "`pip install cloudpickle`",
            why=_why_by_value(str(err), script),
        ) from None
    except Exception as err:
        hint = "" if _cloudpickle() else " (cloudpickle, missing here, sends those by value)"
        raise invalid_argument(
            "fn",
            fn,
            "a function the child process can import or rebuild: define it at module "
            f"level, or a lambda or nested function{hint}, with picklable arguments; "
            f"pickling failed with {type(err).__name__}: {err}",
        ) from None
    if not pickler.uses_script and namespace is None:
        return None, payload
    description = {
        "path": script.path if script is not None and pickler.uses_script else None,
        "module": script.module if script is not None and pickler.uses_script else None,
        "argv": list(sys.argv),
    }
    return pickle.dumps((description, namespace), protocol=pickle.HIGHEST_PROTOCOL), payload


# --- the child: rebuild __main__ --------------------------------------------------


def _public(content: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in content.items() if not (k.startswith("__") and k.endswith("__"))}


class _MainUnpickler(pickle.Unpickler):
    """Finds ``__main__``'s names in the script just run (``__main__`` is not it yet)."""

    def __init__(self, file: Any, content: Mapping[str, Any]) -> None:
        super().__init__(file)
        self.content = content

    def find_class(self, module: str, name: str) -> Any:
        top, _, rest = name.partition(".")
        if module in _MAIN_NAMES and top in self.content:
            return _lookup(self.content[top], rest) if rest else self.content[top]
        return super().find_class(module, name)


def _namespace(description: Mapping[str, Any], namespace: bytes | None) -> dict[str, Any]:
    """Runs the script as ``__mp_main__`` (as spawn does) and loads what came by value."""
    global _preparing
    content: dict[str, Any] = {}
    _preparing = True
    try:
        if description.get("module"):
            content.update(runpy.run_module(description["module"], run_name="__mp_main__"))
        elif description.get("path"):
            content.update(runpy.run_path(description["path"], run_name="__mp_main__"))
    except Exception as err:
        if not isinstance(err, RebuildingMainError):
            err.add_note(
                "(run_isolated ran your script again as __mp_main__ to define the functions "
                "of __main__, as multiprocessing's spawn does: keep code that must run "
                'once under `if __name__ == "__main__":`)'
            )
        raise
    finally:
        _preparing = False
    content = _public(content)
    if namespace is not None:
        unpickler = _MainUnpickler(io.BytesIO(namespace), content)
        unpickler.load()
        content.update(unpickler.load())
    return content


def rebuilt_main() -> dict[str, Any]:
    """The namespace of ``__main__`` in a process a run_isolated child spawned.

    Example:
        >>> rebuilt_main()["train"]     # in a Pool worker of the phase
        <function train at 0x...>
    """
    description = json.loads(os.environ[MAIN_ENV])
    namespace = None
    if description.get("namespace_file"):
        with open(description["namespace_file"], "rb") as f:
            namespace = f.read()
    return _namespace(description, namespace)


def prepare_main(header: bytes) -> None:
    """In the child: builds the ``__main__`` that ``header`` describes and installs it
    (also as ``__mp_main__``), so that ``pickle`` finds its objects by name and the
    processes the phase spawns rebuild it.

    Example:
        >>> prepare_main(header)        # before the payload is unpickled
    """
    import importlib.util

    description, namespace = pickle.loads(header)
    if description.get("argv"):
        sys.argv[:] = description["argv"]
    content = _namespace(description, namespace)
    if namespace is not None:
        name = namespace_file(os.getpid())
        with open(name, "wb") as f:
            f.write(namespace)
        description = {**description, "namespace_file": name}
    os.environ[MAIN_ENV] = json.dumps(description)
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(content)
    module.__spec__ = importlib.util.find_spec(_SPAWN_MAIN)
    if description.get("path"):
        module.__file__ = description["path"]
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module
    cloud = _cloudpickle()
    if cloud is not None:  # cloudpickle takes __main__ by value; this one too (a nested call)
        cloud.register_pickle_by_value(module)


def namespace_file(pid: int) -> str:
    """Where the child ``pid`` keeps what came by value, for the processes it spawns;
    the parent removes it when the child has ended.

    Example:
        >>> namespace_file(4242)
        '/tmp/memguard-main-4242.pkl'
    """
    return os.path.join(tempfile.gettempdir(), f"memguard-main-{pid}.pkl")


def refuse_while_preparing() -> None:
    """Raises where ``__main__`` is being rebuilt: a call at the module level of a script,
    outside its guard, would otherwise start a child from every child.

    Raises:
        RebuildingMainError: (a ``RuntimeError``) the script runs again as
            ``__mp_main__`` now.

    Example:
        >>> refuse_while_preparing()    # at the start of run_isolated
    """
    import multiprocessing

    if _preparing or getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RebuildingMainError(
            "run_isolated was called while your script ran again as __mp_main__ to "
            "define the functions of __main__ in a new process (as multiprocessing's "
            "spawn does): the call is at the module level of the script. Put it under "
            '`if __name__ == "__main__":`.'
        )
