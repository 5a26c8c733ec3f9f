"""A run inside a memory cgroup that grows fast, guarded; run by test_safety.py and
benchmarks/bench_safety.py.

Usage: python safety_training.py KIND FRACTION GUARD_JSON WORKDIR
KIND is ``leak`` (each training batch holds FRACTION of the room the container had at
train begin, for good) or ``cache`` (each batch holds FRACTION of that room until the
working set reaches 85% of the limit, then nothing more: a cache filled in epoch 1).
GUARD_JSON holds MemGuardCallback's keyword arguments (``{}``: none); SAFETY_EPOCHS in
the environment sets the epochs of 20 batches (3). Writes WORKDIR/result.json.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
from training import tiny_data, tiny_model

from keras_memguard import MemGuardCallback, snapshot

kind, fraction, guard_args, workdir = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
CACHE_LEVEL = 0.85


class Grow(keras.callbacks.Callback):
    """Holds ``fraction`` of the room left at train begin per training batch."""

    def __init__(self):
        super().__init__()
        self.held, self.step = [], 0

    def on_train_begin(self, logs=None):
        snap = snapshot(gpus=False)
        self.limit = snap.container_limit
        self.start = snap.container_working_set
        self.step = int(fraction * (self.limit - self.start))

    def on_train_batch_end(self, batch, logs=None):
        if kind == "cache" and snapshot(gpus=False).container_working_set > (
            CACHE_LEVEL * self.limit - self.step
        ):
            return  # the cache is full: it holds what it has
        self.held.append(b"x" * self.step)


x, y = tiny_data(samples=32 * 20)
model = tiny_model()
model.fit(x[:64], y[:64], epochs=1, verbose=0)  # trace first: the run is the fit below
grow = Grow()
kwargs = json.loads(guard_args)
kwargs.setdefault("checkpoint_path", os.path.join(workdir, "ckpt", "guard.keras"))
guard = MemGuardCallback(**kwargs)
epochs = int(os.environ.get("SAFETY_EPOCHS", "3"))  # 20 batches each
history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[grow, guard])
halt = guard.summary.halts[0] if guard.summary.halts else None
result = {
    "limit": grow.limit,
    "start": grow.start,
    "step": grow.step,
    "held": len(grow.held),
    "epochs_run": len(history.history["loss"]),
    "halt": None
    if halt is None
    else {"metric": halt.metric, "batch": halt.batch, "checkpoint": halt.checkpoint},
    "describe": None if halt is None else halt.describe(),
}
with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(result, f)
