"""Training throughput with MemGuardCallback at its defaults against no callback.

Run: python benchmarks/bench_callback_overhead.py
The two are interleaved in one process (A, B, A, B, ...) on the same compiled model,
so drift and noise hit both alike. Throughput is per epoch, timed by a callback placed
after the guard (so the guard's per-batch and epoch-end work is inside the timing);
the guard's once-per-fit costs (the first sample, and the gc at train end) are printed
separately. Goal: ratio >= 0.99.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from keras_memguard import MemGuardCallback

STEPS, BATCH = 150, 64


def make():
    rng = np.random.default_rng(0)
    x = rng.random((STEPS * BATCH, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, STEPS * BATCH)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache().prefetch(2)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    return model, data


class EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rates.append(STEPS * BATCH / (time.perf_counter() - self.start))


def main(rounds: int = 12, epochs: int = 2) -> None:
    model, data = make()
    model.fit(data, epochs=1, verbose=0)  # trace and warm the cache
    guard = MemGuardCallback(verbose=0)
    timers = {"none": EpochTimer(), "guard": EpochTimer()}
    fixed: list[float] = []
    for index in range(rounds):
        sides = [(timers["none"], []), (timers["guard"], [guard])]
        # Alternate which side goes first, so drift within a round cancels out.
        for timer, callbacks in sides if index % 2 == 0 else sides[::-1]:
            model.fit(data, epochs=epochs, verbose=0, callbacks=[*callbacks, timer])
        start = time.perf_counter()
        guard.on_train_begin()
        guard.on_train_end()
        fixed.append(time.perf_counter() - start)
    none, guarded = timers["none"].rates, timers["guard"].rates
    print(f"{rounds * epochs} epochs of {STEPS} steps each way, interleaved")
    print(f"{'run':<22}{'median samples/s':>18}{'best samples/s':>16}")
    print(f"{'no callback':<22}{statistics.median(none):>18.0f}{max(none):>16.0f}")
    print(f"{'MemGuardCallback()':<22}{statistics.median(guarded):>18.0f}{max(guarded):>16.0f}")
    # This machine's epoch times drift and are sometimes bimodal; pairing epoch i of each
    # side (neighbours in time) and taking the median ratio is robust to that.
    paired = statistics.median(g / n for g, n in zip(guarded, none, strict=True))
    best = max(guarded) / max(none)
    verdict = "met" if paired >= 0.99 else "NOT met"
    print(
        f"ratio guard/none: median of paired epochs {paired:.3f} (goal >= 0.99: {verdict}); "
        f"best/best {best:.3f}"
    )
    print(f"once per fit (first sample + gc at train end): {statistics.median(fixed) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
