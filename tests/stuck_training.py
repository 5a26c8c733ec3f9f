"""Guarded training runs whose training thread waits while memory grows (issue #24).

Run as a subprocess inside a memory cgroup by tests/test_watchdog_cgroup.py.

Usage: python stuck_training.py MODE WORKDIR [ON_STUCK]

- ``shuffle`` (TensorFlow): a tf.data pipeline whose shuffle buffer of finished 224x224
  images fills memory before the first batch (the seed's own failure);
- ``generator`` (any backend): a ``PyDataset`` whose third batch fills memory before it
  is returned, as a generator building a huge buffer would;
- ``slow``: a healthy run with slow batches (the test kills it from outside).

``train_with_batch`` is find_batch_size's training function (through
isolated_tasks.fill_input_with_batch, which keeps the driver free of Keras).

The guard writes under WORKDIR/logs; ``ON_STUCK`` is ``exit`` (default) or ``warn``.
The process prints ``TRAINING DONE`` if training ever ends.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from keras_memguard import MemGuardCallback

MIB = 2**20
FILL_CHUNK_MIB = 8  # the generator's growth: 8 MiB every 20 ms, about 400 MiB/s
FILL_PAUSE_S = 0.02
FILL_CAP_MIB = 4096  # never more than this, even outside a cgroup


class FillingDataset(keras.utils.PyDataset):
    """Batches of 8 features; the third call fills memory before it returns."""

    def __init__(self, fill: bool, pause_s: float = 0.0, fill_mib: int = FILL_CAP_MIB) -> None:
        super().__init__()
        self.fill, self.pause_s, self.calls, self.held = fill, pause_s, 0, []
        self.fill_mib = min(fill_mib, FILL_CAP_MIB)

    def __len__(self) -> int:
        return 50

    def __getitem__(self, index):
        self.calls += 1
        if self.fill and self.calls == 3:
            while len(self.held) * FILL_CHUNK_MIB < self.fill_mib:
                self.held.append(np.ones(FILL_CHUNK_MIB * MIB // 8))  # touched pages
                time.sleep(FILL_PAUSE_S)
        time.sleep(self.pause_s)
        rng = np.random.default_rng(index)
        return rng.random((16, 8), dtype=np.float32), rng.integers(0, 2, 16)


def shuffled_images():
    import tensorflow as tf

    def image(i):
        # A finished 224x224 image (588 KiB), made slowly enough to fill ~200 MiB/s.
        tf.py_function(lambda: time.sleep(0.003), [], [])
        return tf.random.uniform((224, 224, 3)), i % 2

    return tf.data.Dataset.range(100_000).map(image).shuffle(20_000).batch(8)


def model(shape):
    built = keras.Sequential(
        [keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")]
    )
    built.compile("adam", "sparse_categorical_crossentropy")
    return built


def train_with_batch(batch_size: int, mib_per_example: int = 24) -> int:
    """For find_batch_size: the input holds ``mib_per_example`` MiB per example at once."""
    data = FillingDataset(fill=True, fill_mib=batch_size * mib_per_example)
    guard = MemGuardCallback(preflight=False)  # see main(): the pre-flight reads x[0]
    history = model((8,)).fit(data, epochs=1, verbose=0, callbacks=[guard])
    return len(history.history["loss"])


def main(mode: str, workdir: str, on_stuck: str = "exit") -> None:
    guard = MemGuardCallback(
        log_dir=os.path.join(workdir, "logs"),
        max_process_memory="80%",
        checkpoint_path=os.path.join(workdir, "guard.keras"),
        on_stuck=on_stuck,
        # the pre-flight reads x[0] of a PyDataset in on_train_begin, which would be the
        # third call that fills memory here, before the watchdog starts (see the notes)
        preflight=False,
    )
    if mode == "shuffle":
        model((224, 224, 3)).fit(shuffled_images(), epochs=1, verbose=0, callbacks=[guard])
    elif mode in ("generator", "slow"):
        data = FillingDataset(fill=mode == "generator", pause_s=0.2 if mode == "slow" else 0)
        model((8,)).fit(data, epochs=3, verbose=0, callbacks=[guard])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("TRAINING DONE", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
