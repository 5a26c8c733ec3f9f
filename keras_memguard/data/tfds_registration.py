"""Registers ``memguard_shapes`` with TFDS without importing TFDS at package import.

Importing TensorFlow Datasets costs seconds (it imports TensorFlow), which ``memguard
doctor`` and ``configure_gpus`` must not pay. So ``import keras_memguard`` registers the
dataset at once when TFDS is already imported, and otherwise the first time anything
imports ``tensorflow_datasets``, through a one-shot import hook that removes itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

from keras_memguard.errors import warn_once

__all__ = ["install", "register"]

_TFDS = "tensorflow_datasets"


def register() -> None:
    """Imports the builder module, which registers it with TFDS."""
    try:
        importlib.import_module("keras_memguard.data.memguard_shapes")
    except Exception as err:  # never break the user's own TFDS import
        warn_once("tfds-register", f"keras-memguard could not register memguard_shapes: {err}")


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _TFDS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            register()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Registers now if TFDS is loaded, else when it is first imported."""
    if _TFDS in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
