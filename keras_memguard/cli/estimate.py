"""``memguard estimate MODULE:FUNCTION``: a fit's predicted peak memory, without training.

``FUNCTION`` (in an importable module, or a ``path/to/file.py``) returns ``(model,
data)`` or ``(model, data, batch_size)``, ``data`` being ``x`` or ``(x, y)``; the command
builds it, estimates and prints the parts (``--json`` for tools). ``--calibrate`` also
runs two small real fits in child processes and prints the calibrated figure.

Example:
    $ memguard estimate train:build --batch-size 256
    predicted peak (host): 1.1 GiB
      variables: 12.1 MiB [exact] (...)
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from keras_memguard.errors import MemGuardError

__all__ = ["EstimateError", "estimate_json", "load_function", "run_estimate"]


class EstimateError(MemGuardError):
    """The target cannot be loaded or does not return ``(model, data[, batch_size])``."""


def load_function(target: str) -> Callable[[], Any]:
    """The function named by ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``."""
    module_name, _, name = target.rpartition(":")
    if not module_name or not name:
        raise EstimateError(f"expected MODULE:FUNCTION, got {target!r}")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            spec = importlib.util.spec_from_file_location("_memguard_target", module_name)
            if spec is None or spec.loader is None:
                raise EstimateError(f"cannot load {module_name!r}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as err:
        raise EstimateError(f"cannot import {module_name!r}: {err}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise EstimateError(f"{module_name!r} has no function {name!r}")
    return function


def estimate_json(estimate: Any) -> str:
    """The estimate as JSON: its fields, every part, and the known total."""
    body = dataclasses.asdict(estimate)
    body["known_bytes"] = estimate.known_bytes
    body["unknown"] = [part.name for part in estimate.unknown]
    return json.dumps(body, indent=2, default=str)


def run_estimate(
    target: str, *, batch_size: int | None = None, as_json: bool = False, calibrate: bool = False
) -> str:
    """Loads ``target``, estimates its fit and returns the text to print."""
    function = load_function(target)
    from keras_memguard.isolation.calibrate import calibrate_estimate, unpack_build

    if calibrate:
        estimate = calibrate_estimate(function, batch_size=batch_size)
    else:
        from keras_memguard.estimate.fit import estimate_fit_memory

        try:
            model, args, built_size = unpack_build(function(), name=target)
        except ValueError as err:
            raise EstimateError(str(err)) from None
        estimate = estimate_fit_memory(model, *args, batch_size=batch_size or built_size)
    return estimate_json(estimate) if as_json else str(estimate)
