"""A training run that leaks 25 MiB per batch, guarded; run as a subprocess by the tests.

Usage: python leaky_training.py WORKDIR
Writes WORKDIR/result.json with what the guard did.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
from training import Leak, tiny_data, tiny_model

from keras_memguard import MemGuardCallback, snapshot

LEAK_MIB = 25
MARGIN_MIB = 250

workdir = sys.argv[1]
x, y = tiny_data(samples=640)
model = tiny_model()
model.fit(x[:64], y[:64], epochs=1, verbose=0)  # warm up tracing before measuring
start = snapshot().process_tree
bound = start + MARGIN_MIB * 2**20
guard = MemGuardCallback(
    log_dir=os.path.join(workdir, "logs"),
    max_process_memory=bound,
    checkpoint_path=os.path.join(workdir, "ckpt", "guard.keras"),
    check_every_n_batches=1,
    add_to_logs=True,  # the CSVLogger columns, beside the memory run
    verbose=1,
)
history = model.fit(
    x,
    y,
    batch_size=32,
    epochs=50,
    verbose=0,
    callbacks=[
        Leak(mib_per_batch=LEAK_MIB),
        guard,
        keras.callbacks.CSVLogger(os.path.join(workdir, "history.csv")),
    ],
)
halt = guard.summary.halts[0] if guard.summary.halts else None
result = {
    "bound": bound,
    "leak": LEAK_MIB * 2**20,
    "halt": None
    if halt is None
    else {
        "metric": halt.metric,
        "value": halt.value,
        "bound": halt.bound,
        "epoch": halt.epoch,
        "batch": halt.batch,
        "checkpoint": halt.checkpoint,
        "reserve": halt.reserve,
    },
    "peak": guard.summary.peak_process_tree,
    "history_keys": sorted(history.history),
    "epochs_run": len(history.history["loss"]),
    "iterations": int(model.optimizer.iterations.numpy()),
    "stop_training": bool(model.stop_training),
}
with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(result, f)
