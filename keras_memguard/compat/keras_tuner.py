"""KerasTuner's private names that ``isolate_trials`` relies on (``keras_tuner.src``).

Example:
    >>> tuner_utils = resolve(TUNER_UTILS)
"""

from __future__ import annotations

from keras_memguard.compat import PrivateSymbol

__all__ = ["BUILD_AND_FIT", "BUILD_AND_FIT_METHOD", "SYMBOLS", "TUNER_UTILS"]

CHECKED = "keras-tuner 1.4.0-1.4.8"
_FALLBACK = "isolate_trials cannot run trials in a child process"

TUNER_UTILS = PrivateSymbol("keras_tuner.src.engine", "tuner_utils", CHECKED, _FALLBACK)
"""Holds ``TunerCallback`` and ``SaveBestEpoch``, which a trial's callbacks contain."""

BUILD_AND_FIT = PrivateSymbol(
    "keras_tuner.src.engine.tuner", "Tuner._build_and_fit_model", CHECKED, _FALLBACK
)
"""The method ``isolate_trials`` replaces to run a trial in a child."""
BUILD_AND_FIT_METHOD = "_build_and_fit_model"

SYMBOLS = (
    TUNER_UTILS,
    BUILD_AND_FIT,
    PrivateSymbol("keras_tuner.src.engine.tuner_utils", "TunerCallback", CHECKED, _FALLBACK),
    PrivateSymbol("keras_tuner.src.engine.tuner_utils", "SaveBestEpoch", CHECKED, _FALLBACK),
)
