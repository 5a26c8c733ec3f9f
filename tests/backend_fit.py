"""A guarded leaky fit with log_dir under whatever KERAS_BACKEND says; run as a subprocess.

Usage: python backend_fit.py WORKDIR
Writes WORKDIR/result.json: the halt, History keys, the reloaded checkpoint's step
count, and which frameworks the process imported.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
from training import Leak, tiny_data, tiny_model

from keras_memguard import MemGuardCallback, snapshot

workdir = sys.argv[1]
x, y = tiny_data(samples=640)
model = tiny_model()
model.fit(x[:64], y[:64], epochs=1, verbose=0)  # compile before measuring
bound = snapshot().process_tree + 250 * 2**20
guard = MemGuardCallback(
    log_dir=os.path.join(workdir, "logs"),
    max_process_memory=bound,
    checkpoint_path=os.path.join(workdir, "ckpt", "guard.keras"),
    check_every_n_batches=1,
    add_to_logs=True,  # the logs keys too, beside the memory run
)
history = model.fit(
    x, y, batch_size=32, epochs=50, verbose=0, callbacks=[Leak(mib_per_batch=25), guard]
)
halt = guard.summary.halts[0] if guard.summary.halts else None
restored = keras.models.load_model(halt.checkpoint) if halt and halt.checkpoint else None
result = {
    "backend": keras.config.backend(),
    "halt": None
    if halt is None
    else {"metric": halt.metric, "checkpoint": halt.checkpoint, "batch": halt.batch},
    "history_keys": sorted(history.history),
    "iterations": int(model.optimizer.iterations.numpy()),
    "restored_iterations": None if restored is None else int(restored.optimizer.iterations.numpy()),
    "frameworks": [m for m in ("tensorflow", "jax", "torch") if m in sys.modules],
}
with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(result, f)
