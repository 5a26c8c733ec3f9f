"""Epoch time while the guard traces allocations (issue #16) against untraced epochs.

Run: KERAS_BACKEND=tensorflow|jax|torch python benchmarks/bench_leak_tracing.py [ROUNDS]
Each round runs two 5-epoch fits of the same compiled model, side by side in one process,
both guarded and both with the same small leak (a 256 KiB NumPy array and the batch's
logs dict kept each batch, the usual shapes of a leak): one with `trace_leaks=False`,
one with `trace_leaks=True` (warm-up 1 epoch: the baseline is taken at the end of epoch
1, epochs 2 and 3 are traced and sampled, the report closes epoch 3, epoch 4 runs after
tracing stopped). Epochs are timed by a callback placed after the guard, so the guard's
sampling at epoch end is inside the timing. The rounds alternate which fit goes first.
Goal: every traced epoch <= 3x the median untraced epoch.

It also prints the growth classifier's own cost (issue #27: the measured collections,
`malloc_trim` and compile counters, timed inside the guard): per epoch without suspected
growth (the untraced fits: it must be zero, today's cost) and per traced epoch end with
it, and the kinds it named. Figures need a quiet machine.
"""

from __future__ import annotations

import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from _timing import EpochTimer

from keras_memguard import MemGuardCallback

STEPS, BATCH, FEATURES = 60, 256, 256
EPOCHS = 5


class Leak(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.kept: list[object] = []

    def on_train_batch_end(self, batch, logs=None):
        self.kept.append(np.ones(2**15))
        self.kept.append(dict(logs or {}))


def main(rounds: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((STEPS * BATCH, FEATURES), dtype=np.float32)
    y = rng.integers(0, 10, STEPS * BATCH)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # compile once, outside timing

    untraced: list[float] = []
    traced: dict[int, list[float]] = {1: [], 2: [], 3: [], 4: []}
    found = []
    probe_untraced: list[float] = []
    probe_traced: list[float] = []
    kinds: list[str] = []
    for round_ in range(rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for trace in order:
            timer = EpochTimer()
            guard = MemGuardCallback(trace_leaks=trace, verbose=0)
            model.fit(
                x,
                y,
                batch_size=BATCH,
                epochs=EPOCHS,
                verbose=0,
                callbacks=[Leak(), guard, timer],
            )
            if trace:
                for epoch in traced:
                    traced[epoch].append(timer.seconds[epoch])
                found.append([site.location for site in guard.summary.leak_sites])
                # the probe runs at the 3 traced epoch ends (baseline, sample, report)
                probe_traced.append(guard._leaks.probe.seconds / 3)
                growth = guard.summary.growth
                kinds = [k.headline() for k in growth.kinds] if growth is not None else []
            else:
                untraced.extend(timer.seconds[1:])
                probe_untraced.append(guard._leaks.probe.seconds / EPOCHS)
    base = statistics.median(untraced)
    print(f"backend {keras.backend.backend()}, {rounds} rounds, {STEPS} steps of {BATCH}")
    print(f"untraced epoch: median {base:.3f} s (min {min(untraced):.3f}, max {max(untraced):.3f})")
    labels = {
        1: "epoch 1 (+ baseline sample)",
        2: "epoch 2 (traced)",
        3: "epoch 3 (traced + report)",
        4: "epoch 4 (after tracing)",
    }
    worst = 0.0
    for epoch, times in traced.items():
        ratio = max(times) / base
        if epoch in (2, 3):
            worst = max(worst, ratio)
        print(
            f"{labels[epoch]:<30} median {statistics.median(times):.3f} s, "
            f"worst {max(times):.3f} s = {ratio:.2f}x untraced"
        )
    print(f"sites named: {found[0]}")
    print(
        f"growth classifier: {max(probe_untraced):.3f} s/epoch without suspected growth, "
        f"median {statistics.median(probe_traced):.3f} s (worst {max(probe_traced):.3f} s) "
        f"per traced epoch end with it = {max(probe_traced) / base:.2f}x an untraced epoch"
    )
    print(f"kinds named: {kinds}")
    print(f"worst traced epoch: {worst:.2f}x (goal <= 3x): {'met' if worst <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
