"""Real fit() runs that leak in three ways the guard must locate; run as a subprocess.

Usage: KERAS_BACKEND=... python leak_sites_training.py {leaks,healthy} WORKDIR
Writes WORKDIR/result.json: the sites the guard reported, its warnings and summary.
The lines that leak end in a ``# SITE: <name>`` comment; the tests look them up.
"""

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras.layers import Dense
from training import tiny_data, tiny_model

from keras_memguard import MemGuardCallback, MemGuardWarning


class NumpyHoarder(keras.callbacks.Callback):
    """Keeps a 1 MiB NumPy array per batch: 4 MiB per epoch."""

    def __init__(self):
        super().__init__()
        self.kept = []

    def on_train_batch_end(self, batch, logs=None):
        self.kept.append(np.full(2**17, float(batch)))  # SITE: numpy


class TensorHoarder(keras.callbacks.Callback):
    """Keeps a 512 KiB backend tensor (a keras.ops result) per batch: 2 MiB per epoch."""

    def __init__(self):
        super().__init__()
        self.kept = []

    def on_train_batch_end(self, batch, logs=None):
        self.kept.append(keras.ops.multiply(keras.ops.ones((128, 1024)), batch))  # SITE: ops


def build_model():
    return keras.Sequential([keras.Input((256,)), Dense(512), Dense(512)])  # SITE: model


class ModelHoarder(keras.callbacks.Callback):
    """Builds a new 1.5 MiB model each epoch and keeps it."""

    def __init__(self):
        super().__init__()
        self.models = []

    def on_epoch_end(self, epoch, logs=None):
        self.models.append(build_model())


def fit(callbacks, trace_leaks, epochs):
    x, y = tiny_data(samples=128)
    model = tiny_model()
    guard = MemGuardCallback(
        log_dir=os.path.join(workdir, "logs"),
        leak_threshold="2MiB",
        trace_leaks=trace_leaks,
        verbose=1,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[*callbacks, guard])
    return {
        "sites": [
            {
                "location": site.location,
                "function": site.function,
                "bytes_per_epoch": site.bytes_per_epoch,
                "allocations_per_epoch": site.allocations_per_epoch,
                "tensor_bytes_per_epoch": site.tensor_bytes_per_epoch,
                "what": list(site.what),
                "in_user_code": site.in_user_code,
                "traceback": site.format_traceback(),
            }
            for site in guard.summary.leak_sites
        ],
        "warnings": [str(w.message) for w in caught if issubclass(w.category, MemGuardWarning)],
        "summary": str(guard.summary),
        "traced_epochs": guard._tracer.traced_epochs,
    }


scenario, workdir = sys.argv[1], sys.argv[2]
if scenario == "leaks":
    result = fit([NumpyHoarder(), TensorHoarder(), ModelHoarder()], None, epochs=7)
elif scenario == "healthy":
    result = {"auto": fit([], None, epochs=6), "traced": fit([], True, epochs=6)}
else:
    sys.exit(f"unknown scenario {scenario!r}")
result["backend"] = keras.backend.backend()
with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(result, f, indent=1)
