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
guard = mg.MemGuardCallback(
    log_dir=os.path.join(workdir, "logs"), max_process_memory="95%", add_to_logs=True
)
x = np.random.default_rng(0).random((256, 8), dtype=np.float32)
y = (x.sum(axis=1) > 4).astype("int32")
history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[guard])
kernel = model.layers[0].kernel.value
result = {
    "devices": devices,
    "kernel_devices": len(kernel.sharding.device_set),
    "device_memory": current_backend().device_memory(),
    "history_keys": sorted(history.history),
    "epochs": len(history.history["loss"]),
    "halts": len(guard.summary.halts),
    "frameworks": [m for m in ("tensorflow", "jax", "torch") if m in sys.modules],
}
with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(result, f)
