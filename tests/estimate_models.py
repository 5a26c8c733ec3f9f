"""Small models and data for the fit-memory estimate, and a script measuring one case.

Usage: python estimate_models.py MODEL BATCH_SIZE OUT.json
In this fresh process: builds MODEL ("dense", "conv" or "wide"), builds its optimizer as
fit does, measures the peak RSS during a 3-step ``fit`` minus the RSS before it, then
estimates the same fit; writes the measured and predicted bytes and the parts.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

MODELS = ("dense", "conv", "wide")


def build(name: str, samples: int) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """A compiled model and float32 data of ``samples`` rows (fixed seed)."""
    rng = np.random.default_rng(0)
    if name == "conv":
        inputs, shape = keras.Input((32, 32, 3)), (32, 32, 3)
        hidden = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
        hidden = keras.layers.Conv2D(16, 3, activation="relu")(hidden)
        hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    elif name == "dense":
        inputs, shape = keras.Input((256,)), (256,)
        hidden = keras.layers.Dense(512, activation="relu")(inputs)
        hidden = keras.layers.Dense(512, activation="relu")(hidden)
    elif name == "wide":
        inputs, shape = keras.Input((1024,)), (1024,)
        hidden = keras.layers.Dense(2048, activation="relu")(inputs)
        hidden = keras.layers.Dense(2048, activation="relu")(hidden)
    else:
        raise ValueError(f"unknown model {name!r}: one of {MODELS}")
    model = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = rng.random((samples, *shape), dtype=np.float32)
    y = rng.integers(0, 10, samples).astype("int32")
    return model, x, y


def measure(name: str, batch_size: int, steps: int = 3) -> dict:
    """The measured and predicted figures of one fit, in this (fresh) process."""
    from keras_memguard.backends.step import build_for_fit
    from keras_memguard.estimate.fit import estimate_fit_memory, fit_added_bytes
    from keras_memguard.estimate.specs import fit_spec
    from keras_memguard.isolation.calibrate import measure_fit_peak

    model, x, y = build(name, batch_size * steps)
    build_for_fit(model, fit_spec(x, y, batch_size)[0])
    measured = measure_fit_peak(model, x, y, batch_size=batch_size, epochs=1)
    start = time.perf_counter()
    estimate = estimate_fit_memory(model, x, y, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {
        "model": name,
        "batch_size": batch_size,
        "measured": measured,
        "predicted": fit_added_bytes(estimate),
        "known": estimate.known_bytes,
        "seconds": seconds,
        "parts": [str(part) for part in estimate.parts],
    }


def conv_fit_256() -> tuple[keras.Model, tuple[np.ndarray, np.ndarray], int]:
    """``(model, (x, y), batch_size)`` of the conv case at batch 256, for calibration."""
    model, x, y = build("conv", 256 * 3)
    return model, (x, y), 256


if __name__ == "__main__":
    result = measure(sys.argv[1], int(sys.argv[2]))
    with open(sys.argv[3], "w") as f:
        json.dump(result, f)
