"""Every private or version-sensitive API of another project, named in one place.

The rule: keras-memguard reaches into another project's internals (``jax._src``,
``keras.src``, ``tensorflow.python``, a CPython C function) only through a compat module
that names each symbol as a :class:`PrivateSymbol`, says on which versions it was
checked, and resolves it with :func:`resolve`, which fails soft: a symbol missing from
a new release gives one warning (``warn_once``) and ``None``, never a crash in training.
``tests/test_compat.py`` resolves every named symbol on the installed versions, so a
new release fails a test instead of a user's run.

Per project: ``compat/keras.py``, ``compat/keras_tuner.py``, ``compat/cpython.py``
here; the frameworks' internals in ``backends/<framework>/compat.py`` (the only
folders that may import a framework).

Example:
    >>> from keras_memguard.compat.keras import LAZY_TENSORFLOW
    >>> resolve(LAZY_TENSORFLOW, loaded_only=True)   # None unless Keras is imported
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

from keras_memguard.errors import warn_once

__all__ = ["PrivateSymbol", "resolve"]


@dataclass(frozen=True)
class PrivateSymbol:
    """One private or version-sensitive name of another project.

    Attributes:
        module: the module that holds it (``"jax._src.xla_bridge"``).
        attribute: the dotted attribute path inside it (``"_backends"``); empty for the
            module itself.
        checked: the versions it was checked on (``"jax 0.4.26-0.10.2"``).
        fallback: what keras-memguard does without it (said in the warning).
        source_mentions: for an instance attribute (set in ``__init__`` or later), a
            name the resolved class's source must mention; checked by the tests only.
    """

    module: str
    attribute: str
    checked: str
    fallback: str
    source_mentions: str = ""

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attribute}" if self.attribute else self.module


_MISSING = object()


def resolve(symbol: PrivateSymbol, *, loaded_only: bool = False, warn: bool = True) -> Any:
    """The symbol's current value, or ``None`` (with one warning) where it is gone.

    Args:
        symbol: the symbol to look up.
        loaded_only: read only a module already imported (``sys.modules``), never import
            one: ``None`` without a warning when it is not loaded. Defaults to `False`.
        warn: warn once when the symbol is missing. Defaults to `True`.

    Example:
        >>> resolve(PrivateSymbol("os", "path.join", "CPython 3.11", "none")) is os.path.join
        True
    """
    if loaded_only:
        value = sys.modules.get(symbol.module, _MISSING)
        if value is _MISSING:
            return None
    else:
        try:
            value = importlib.import_module(symbol.module)
        except Exception as err:  # ImportError, or a framework failing at import
            return _missing(symbol, f"cannot import {symbol.name} ({err})", warn)
    for part in symbol.attribute.split(".") if symbol.attribute else ():
        value = getattr(value, part, _MISSING)
        if value is _MISSING:
            return _missing(symbol, f"{symbol.name} is not in this version", warn)
    return value


def _missing(symbol: PrivateSymbol, why: str, warn: bool) -> None:
    if warn:
        warn_once(
            f"compat:{symbol.name}",
            f"keras-memguard: {why} (checked on {symbol.checked}); {symbol.fallback}.",
            stacklevel=3,
        )
    return None
