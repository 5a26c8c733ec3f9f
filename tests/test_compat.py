"""Every private name of another project that keras-memguard uses resolves here.

Each compat module lists its symbols (``SYMBOLS``) with the versions they were checked
on; this resolves each on the installed versions, so a release that moves one fails
this test instead of a user's training run. A project not installed in this
environment is skipped, with the reason.
"""

import importlib
import importlib.util
import inspect
import warnings

import pytest

from keras_memguard.backends.base import BACKENDS
from keras_memguard.compat import PrivateSymbol, resolve
from keras_memguard.errors import MemGuardWarning, reset_warnings

pytestmark = pytest.mark.backends

COMPAT_MODULES = [
    "keras_memguard.compat.keras",
    "keras_memguard.compat.keras_tuner",
    "keras_memguard.compat.cpython",
    *(f"keras_memguard.backends.{name}.compat" for name in BACKENDS),
]


def _symbols():
    for module in COMPAT_MODULES:
        for symbol in importlib.import_module(module).SYMBOLS:
            yield pytest.param(symbol, id=symbol.name)


def _skip_if_not_installed(symbol: PrivateSymbol) -> None:
    top = symbol.module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        pytest.skip(f"{top} is not installed in this environment")
    # The package itself first: an import that failed earlier in this process leaves its
    # submodules behind, so only the package's own import says what it lacks (keras-tuner
    # imports TensorFlow, absent from the JAX and PyTorch environments).
    for module in (top, symbol.module):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # e.g. Keras's JAX trainer without JAX
            missing = (err.name or "").split(".")[0]
            if missing != top and importlib.util.find_spec(missing) is None:
                pytest.skip(f"{module} needs {missing}, not installed here")
            raise


def test_every_compat_module_lists_its_symbols():
    for module in COMPAT_MODULES:
        symbols = importlib.import_module(module).SYMBOLS
        assert all(isinstance(s, PrivateSymbol) and s.checked for s in symbols), module


@pytest.mark.parametrize("symbol", list(_symbols()))
def test_each_private_symbol_resolves_on_the_installed_versions(symbol):
    _skip_if_not_installed(symbol)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemGuardWarning)
        value = resolve(symbol)
    assert value is not None, f"{symbol.name} is gone (checked on {symbol.checked})"
    if symbol.source_mentions:  # an instance attribute: its class's source sets it
        plain = inspect.isclass(value) or inspect.ismodule(value) or inspect.isroutine(value)
        assert symbol.source_mentions in inspect.getsource(value if plain else type(value)), (
            f"{symbol.name} no longer mentions {symbol.source_mentions}"
        )


def test_a_missing_symbol_warns_once_and_gives_none():
    reset_warnings()
    gone = PrivateSymbol("json", "_no_such_name", "json of CPython 3.11", "nothing is lost")
    with pytest.warns(MemGuardWarning, match=r"json\._no_such_name.*CPython 3\.11.*nothing"):
        assert resolve(gone) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemGuardWarning)
        assert resolve(gone) is None  # the second time: silent
    assert resolve(PrivateSymbol("no_such_module_here", "", "-", "-"), warn=False) is None


def test_loaded_only_never_imports():
    symbol = PrivateSymbol("tabnanny", "check", "CPython 3.11", "-")
    import sys

    if "tabnanny" in sys.modules:
        pytest.skip("tabnanny is already imported in this process")
    assert resolve(symbol, loaded_only=True) is None
    assert "tabnanny" not in sys.modules
