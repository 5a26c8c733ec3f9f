"""Parent-process memory growth per trial: in-process with release_memory vs run_isolated.

Run: python benchmarks/bench_trials.py [TRIALS]
Each trial builds, compiles and fits a small CNN for one epoch, as a hyperparameter
search or a k-fold loop does. Side by side: the parent's RSS growth per trial and the
wall time per trial. The isolated side runs first, while the parent has not imported
TensorFlow at all, which is how a driver script using run_isolated looks.
With keep_warm=True a spare child imports TensorFlow while the current trial runs.
Goal: isolated growth <= 0.5 MB per trial.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_memguard import release_memory, run_isolated
from keras_memguard.isolation.run import shutdown_spares
from keras_memguard.probes.process import read_process_memory


def trial(units: int) -> float:
    import keras
    import numpy as np

    rng = np.random.default_rng(units)
    x = rng.random((512, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 4, 512)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(units, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    return float(model.fit(x, y, batch_size=64, epochs=1, verbose=0).history["loss"][-1])


def import_only() -> bool:
    import tensorflow  # noqa: F401

    return True


def rss_mb() -> float:
    mem = read_process_memory()
    return (mem.rss if mem else 0) / 1e6


def measure(run_one, trials: int) -> tuple[float, float]:
    run_one(0)  # warm-up: one-off costs are not growth
    base, start = rss_mb(), time.perf_counter()
    for index in range(trials):
        run_one(index + 1)
    seconds = (time.perf_counter() - start) / trials
    return (rss_mb() - base) / trials, seconds


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    start = time.perf_counter()
    run_isolated(import_only)
    startup = time.perf_counter() - start

    isolated = measure(lambda i: run_isolated(trial, 8 + i % 8), trials)
    warm = measure(lambda i: run_isolated(trial, 8 + i % 8, keep_warm=True), trials)
    shutdown_spares()

    def in_process(i: int) -> None:
        trial(8 + i % 8)
        release_memory(clear_session=True)

    inline = measure(in_process, trials)
    print(f"{trials} trials each; parent RSS growth per trial and wall time per trial")
    print(f"{'':<36}{'MB/trial':>10}{'s/trial':>10}")
    print(f"{'in-process + release_memory':<36}{inline[0]:>10.2f}{inline[1]:>10.2f}")
    print(f"{'run_isolated':<36}{isolated[0]:>10.2f}{isolated[1]:>10.2f}")
    print(f"{'run_isolated(keep_warm=True)':<36}{warm[0]:>10.2f}{warm[1]:>10.2f}")
    print(f"child start-up (spawn + import tensorflow): {startup:.2f} s")
    verdict = "met" if max(isolated[0], warm[0]) <= 0.5 else "NOT met"
    print(f"goal: isolated growth <= 0.5 MB/trial -> {verdict}")


if __name__ == "__main__":
    main()
