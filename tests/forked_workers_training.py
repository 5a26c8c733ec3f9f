"""fit() fed by a PyDataset with 4 forked worker processes while this process holds 1.5 GiB.

Usage: python forked_workers_training.py WORKDIR
Writes WORKDIR/result.json with two guarded runs: `calm`, then `leak`, in which each
worker keeps 8 MiB per batch it makes.
The start method is pinned to fork (Linux's default before Python 3.14), which is what
makes the workers share the parent's pages.
"""

import json
import multiprocessing
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import psutil
from training import tiny_model

from keras_memguard import MemGuardCallback, snapshot

multiprocessing.set_start_method("fork", force=True)  # before any pool exists
GIB = 2**30
workdir = sys.argv[1]
held_in_worker: list[bytes] = []


class Batches(keras.utils.PyDataset):
    def __init__(self, leak_mib: int, batches: int) -> None:
        super().__init__(workers=4, use_multiprocessing=True, max_queue_size=4)
        self.leak_mib, self.batches = leak_mib, batches

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index):
        if self.leak_mib:
            held_in_worker.append(b"x" * (self.leak_mib * 2**20))
        time.sleep(0.05)  # a loader doing real work
        rng = np.random.default_rng(index)
        x = rng.random((32, 8), dtype=np.float32)
        return x, (x.sum(axis=1) > 4).astype("int32")


class NaiveSum(keras.callbacks.Callback):
    """What summing every process's RSS (the old tree figure) reads, at its highest."""

    def __init__(self) -> None:
        super().__init__()
        self.highest, self.children = 0, 0

    def on_train_batch_end(self, batch, logs=None):
        me = psutil.Process()
        kids = me.children(recursive=True)
        total = me.memory_info().rss + sum(k.memory_info().rss for k in kids)
        self.highest, self.children = max(self.highest, total), max(self.children, len(kids))


ballast = np.ones(3 * GIB // 2 // 8)  # 1.5 GiB, every page written
model = tiny_model()
model.fit(Batches(0, 8), epochs=1, verbose=0)  # warm up tracing and the worker pool code


def guarded_run(leak_mib: int) -> dict:
    start = snapshot().process_tree
    bound = start + 3 * GIB // 2
    guard = MemGuardCallback(max_process_memory=bound, check_every_n_batches=1, verbose=0)
    naive = NaiveSum()
    history = model.fit(Batches(leak_mib, 320), epochs=2, verbose=0, callbacks=[naive, guard])
    halt = guard.summary.halts[0] if guard.summary.halts else None
    return {
        "start": start,
        "bound": bound,
        "naive_highest": naive.highest,
        "workers_seen": naive.children,
        "peak_tree": guard.summary.peak_process_tree,
        "epochs_run": len(history.history["loss"]),
        "halt": None
        if halt is None
        else {"metric": halt.metric, "value": halt.value, "reserve": halt.reserve},
    }


result = {"calm": guarded_run(0), "leak": guarded_run(8), "ballast": float(ballast[-1])}
with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(result, f)
