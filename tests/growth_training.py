"""Real fit() runs that grow memory in one way each; the guard must say which kind.

Usage: KERAS_BACKEND=... python growth_training.py SCENARIO WORKDIR
SCENARIO: numpy, tensors, cycles, native, recompile (JAX only), healthy, churn (healthy).
Each leaking scenario injects 512 KiB per batch, 8 batches per epoch: 4 MiB per epoch.
Writes WORKDIR/result.json: the kinds of growth, leak sites, warnings and summary.
The lines that allocate end in a ``# SITE: <name>`` comment; the tests look them up.
"""

import ctypes
import ctypes.util
import gc
import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from training import tiny_data, tiny_model

from keras_memguard import MemGuardCallback, MemGuardWarning

CHUNK = 512 * 1024  # bytes injected per batch
BATCHES = 8  # batches per epoch
EPOCHS = 7


class KeepArrays(keras.callbacks.Callback):
    """Keeps a NumPy array per batch (objects)."""

    def __init__(self):
        super().__init__()
        self.kept = []

    def on_train_batch_end(self, batch, logs=None):
        self.kept.append(np.full(CHUNK // 8, float(batch)))  # SITE: numpy


class KeepTensors(keras.callbacks.Callback):
    """Keeps a backend tensor (a keras.ops result) per batch (tensors)."""

    def __init__(self):
        super().__init__()
        self.kept = []

    def on_train_batch_end(self, batch, logs=None):
        ones = keras.ops.ones((128, CHUNK // 512))
        self.kept.append(keras.ops.multiply(ones, batch))  # SITE: ops


class Node:
    """An object that refers to itself: freed only by the cycle collector."""

    def __init__(self, data):
        self.data = data
        self.me = self


class MakeCycles(keras.callbacks.Callback):
    """Each batch, a cycle holding an array; dropped after it survived young collections.

    The cycle stays reachable while young collections run (``gc.collect(1)`` here does
    deterministically what a step's allocations do by chance), so it reaches the oldest
    generation; once dropped, only a full collection frees it.
    """

    def __init__(self):
        super().__init__()
        self.current = None

    def on_train_batch_end(self, batch, logs=None):
        self.current = Node(np.full(CHUNK // 8, float(batch)))  # SITE: cycle
        gc.collect(1)


class NativeMalloc(keras.callbacks.Callback):
    """Each batch, 512 KiB from libc's malloc, written to, never freed: Python never sees it."""

    def __init__(self):
        super().__init__()
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        self.libc.malloc.restype = ctypes.c_void_p
        self.libc.malloc.argtypes = [ctypes.c_size_t]

    def on_train_batch_end(self, batch, logs=None):
        address = self.libc.malloc(CHUNK)
        ctypes.memset(address, 1, CHUNK)


class Recompile(keras.callbacks.Callback):
    """Calls a jitted function with a new input shape every batch (JAX)."""

    def __init__(self):
        super().__init__()
        import jax

        @jax.jit
        def features(x):
            for i in range(8):
                x = jax.numpy.tanh(x @ x.T @ x + i)
            return x.sum()

        self.features = features
        self.rows = 8

    def on_train_batch_end(self, batch, logs=None):
        self.rows += 1
        self.features(np.ones((self.rows, 16), "float32")).block_until_ready()


class Churn(keras.callbacks.Callback):
    """Each batch, 8 MiB of 1 KiB blocks from malloc, all freed again (healthy)."""

    def on_train_batch_end(self, batch, logs=None):
        blocks = [bytes(1024) for _ in range(8192)]
        del blocks


SCENARIOS = {
    "numpy": KeepArrays,
    "tensors": KeepTensors,
    "cycles": MakeCycles,
    "native": NativeMalloc,
    "recompile": Recompile,
}


def fit(callbacks, trace_leaks=None):
    x, y = tiny_data(samples=32 * BATCHES)
    model = tiny_model()
    guard = MemGuardCallback(
        log_dir=os.path.join(workdir, "logs"),
        leak_threshold="2MiB",
        trace_leaks=trace_leaks,
        verbose=1,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=EPOCHS, verbose=0, callbacks=[*callbacks, guard])
    growth = guard.summary.growth
    return {
        "kinds": [
            {
                "kind": kind.kind,
                "bytes_per_epoch": kind.bytes_per_epoch,
                "share": kind.share,
                "evidence": list(kind.evidence),
                "compilations_per_epoch": kind.compilations_per_epoch,
            }
            for kind in (growth.kinds if growth is not None else ())
        ],
        "growth": None if growth is None else growth.growth,
        "slope": guard.summary.leak_slope_mib_per_epoch,
        "sites": [site.location for site in guard.summary.leak_sites],
        "warnings": [str(w.message) for w in caught if issubclass(w.category, MemGuardWarning)],
        "summary": str(guard.summary),
        "traced_epochs": guard._tracer.traced_epochs,
        "probe_seconds": guard._leaks.probe.seconds,
    }


scenario, workdir = sys.argv[1], sys.argv[2]
if scenario == "healthy":
    result = {"auto": fit([]), "traced": fit([], trace_leaks=True)}
elif scenario == "churn":
    result = fit([Churn()], trace_leaks=True)
elif scenario in SCENARIOS:
    result = fit([SCENARIOS[scenario]()])
else:
    sys.exit(f"unknown scenario {scenario!r}")
result["backend"] = keras.backend.backend()
with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(result, f, indent=1)
