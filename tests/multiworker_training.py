"""One worker of a two-worker MultiWorkerMirroredStrategy run on 127.0.0.1 (tf_keras).

Usage: python multiworker_training.py INDEX PORT0,PORT1 WORKDIR LEAK_MIB
Only the worker given LEAK_MIB > 0 leaks; both are guarded. Writes
WORKDIR/result<INDEX>.json.
"""

import json
import os
import sys

index, ports, workdir, leak_mib = (
    int(sys.argv[1]),
    sys.argv[2].split(","),
    sys.argv[3],
    int(sys.argv[4]),
)
os.environ["TF_CONFIG"] = json.dumps(
    {
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index},
    }
)
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_memguard import snapshot  # noqa: E402
from keras_memguard.legacy import LegacyMemGuardCallback  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()
keras = tf.keras
rng = np.random.default_rng(0)
x = rng.random((640, 8), dtype=np.float32)
y = (x.sum(1) > 4).astype("int32")
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat().with_options(options)
with strategy.scope():
    model = keras.Sequential(
        [
            keras.layers.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
model.fit(data, epochs=1, steps_per_epoch=4, verbose=0)  # warm up before measuring

held = []


class Leak(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if leak_mib:
            held.append(b"x" * (leak_mib * 2**20))


start = snapshot().process_tree_rss
guard = LegacyMemGuardCallback(
    log_dir=os.path.join(workdir, "logs"),
    max_process_memory=start + 200 * 2**20,
    checkpoint_path=os.path.join(workdir, "ckpt", "guard.keras"),
    check_every_n_batches=2,
    verbose=1,
)
history = model.fit(data, epochs=20, steps_per_epoch=10, verbose=0, callbacks=[Leak(), guard])
halt = guard.summary.halts[0] if guard.summary.halts else None
result = {
    "index": index,
    "halt": None
    if halt is None
    else {
        "metric": halt.metric,
        "epoch": halt.epoch,
        "batch": halt.batch,
        "checkpoint": halt.checkpoint,
    },
    "epochs_run": len(history.history["loss"]),
    "iterations": int(model.optimizer.iterations.numpy()),
}
with open(os.path.join(workdir, f"result{index}.json"), "w") as f:
    json.dump(result, f)
