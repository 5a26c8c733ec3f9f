"""A guarded fit under keras.distribution.DataParallel on JAX; run as a subprocess.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=2 python data_parallel_fit.py DIR
Writes DIR/result.json.
"""

import json
import os
import sys

import keras
import numpy as np

import keras_memguard as mg
from keras_memguard.backends.base import current_backend

workdir = sys.argv[1]
devices = keras.distribution.list_devices()
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
model = keras.Sequential(
    [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)]
)
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.default_rng(0).random((256, 8), dtype=np.float32)
y = (x.sum(axis=1) > 4).astype("int32")
model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # compiled: no growth from tracing


class LeakFromEpochOne(keras.callbacks.Callback):
    """Holds 30 MiB per training batch (16 per epoch) from epoch 1 on: the bound is
    crossed mid-epoch."""

    def __init__(self):
        super().__init__()
        self.held = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch >= 1:
            self.held.append(np.ones(30 * 2**20, dtype=np.uint8))


bound = mg.snapshot().process_tree + 200 * 2**20
checkpoint = os.path.join(workdir, "halt.keras")
guard = mg.MemGuardCallback(
    log_dir=os.path.join(workdir, "logs"),
    max_process_memory=bound,
    checkpoint_path=checkpoint,
    check_every_n_batches=1,
    add_to_logs=True,
)
history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[LeakFromEpochOne(), guard])
kernel = model.layers[0].kernel.value
halt = guard.summary.halts[0] if guard.summary.halts else None
restored = keras.saving.load_model(checkpoint) if os.path.exists(checkpoint) else None
result = {
    "bound": bound,
    "halt": None if halt is None else [halt.metric, halt.epoch, halt.batch, halt.value],
    "restored_kernel": None if restored is None else list(restored.layers[0].kernel.shape),
    "devices": devices,
    "kernel_devices": len(kernel.sharding.device_set),
    "device_memory": current_backend().device_memory(),
    "history_keys": sorted(history.history),
    "epochs": len(history.history["loss"]),
    "halts": len(guard.summary.halts),
    "peak": guard.summary.peak_process_tree,
    "frameworks": [m for m in ("tensorflow", "jax", "torch") if m in sys.modules],
}
with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(result, f)
