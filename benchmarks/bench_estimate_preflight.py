"""Cost of the guard's default pre-flight (issue #25): the cheap parts of an estimate.

Run: KERAS_BACKEND=tensorflow python benchmarks/bench_estimate_preflight.py [--quick]
For each input (NumPy arrays, the seed's tf.data pipeline with a 12,000-element shuffle
buffer and an in-memory cache, a PyDataset with 4 workers), times:
- ``first``: the first pre-flight of a model and input (counts everything);
- ``again``: each later fit's pre-flight (``preflight_estimate`` on the cached input,
  ``model_parts`` cached until the weights or optimizer change), median;
- ``decide``: ``preflight_message`` on those parts, median.
Goal (issue #25): the default pre-flight <= 20 ms per fit after the first.
``preflight_section()`` returns the rows, for bench_estimate.py to print beside the
full estimate. Figures need a quiet machine: run alone.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import keras
import numpy as np

from keras_memguard.guard import preflight
from keras_memguard.guard.policy import Bounds
from keras_memguard.memory_snapshot import snapshot

GOAL_MS = 20.0


def cnn() -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


class Images(keras.utils.PyDataset):
    def __init__(self) -> None:
        super().__init__(workers=4, max_queue_size=10)

    def __len__(self) -> int:
        return 100

    def __getitem__(self, index: int) -> Any:
        return np.zeros((32, 64, 64, 3), "float32"), np.zeros(32, "int32")


def inputs() -> dict[str, preflight.FitInput]:
    cases = {
        "arrays": preflight.FitInput(
            np.zeros((2000, 64, 64, 3), "float32"), np.zeros(2000, "int32"), 32
        ),
        "pydataset": preflight.FitInput(Images()),
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        seed = (
            tf.data.Dataset.range(10**6)
            .map(lambda i: (tf.zeros((196, 256, 3)), 0), num_parallel_calls=tf.data.AUTOTUNE)
            .cache()
            .shuffle(12_000)
            .batch(32)
            .prefetch(tf.data.AUTOTUNE)
        )
        cases["tf.data seed"] = preflight.FitInput(seed)
    return cases


def ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def preflight_section(repeat: int = 50) -> list[dict[str, Any]]:
    """One row per input: first, again and decide in ms, and whether the goal is met."""
    rows = []
    snap = snapshot(gpus=False)
    for name, data in inputs().items():
        model = cnn()
        start = time.perf_counter()
        estimate = preflight.preflight_estimate(model, data, "cheap")
        first = (time.perf_counter() - start) * 1e3
        again = ms(lambda m=model, d=data: preflight.preflight_estimate(m, d, "cheap"), repeat)
        resident = preflight.resident_parts(model)
        decide = ms(
            lambda e=estimate, r=resident: preflight.preflight_message(e.parts, snap, Bounds(), r),
            repeat,
        )
        rows.append(
            {
                "input": name,
                "first_ms": first,
                "again_ms": again,
                "decide_ms": decide,
                "met": again + decide <= GOAL_MS,
                "estimate": str(estimate),
            }
        )
    return rows


def main() -> None:
    repeat = 5 if "--quick" in sys.argv else 50
    print(f"backend {keras.backend.backend()}; goal: again + decide <= {GOAL_MS:.0f} ms")
    for row in preflight_section(repeat):
        print(
            f"{row['input']:>14}: first {row['first_ms']:8.2f} ms, again {row['again_ms']:6.3f} "
            f"ms, decide {row['decide_ms']:6.3f} ms -> {'met' if row['met'] else 'NOT met'}"
        )
        print("    " + row["estimate"].replace("\n", "\n    "))


if __name__ == "__main__":
    main()
