"""The predicting batch-size search (issue #26) against the halving one, on one backend.

Run: KERAS_BACKEND=jax python benchmarks/bench_batch_search.py [--keep-warm]
(and tensorflow, torch; ``--keep-warm`` gives both strategies ``keep_warm=True``).
A convolutional model (three 3x3 convolutions on 48x48x3, Adam); each attempt is one
real training step at the batch size in a fresh child (``run_isolated``). The bound
(``max_memory``, the child's RSS) is set from two measured children (one step at batch 8
and at 256) so that the largest batch that fits is about 190: from START=1024 the
halving search fails at 1024, 512 and 256 (three failing attempts) before 128 fits.
Per strategy: wall time, attempts, out-of-memory attempts, the children that ran work,
the batch size found, and for the predicting one its figures. The predicting search
confirms its pick in the estimate's own child: one child in all when the pick fits
(its ``attempts`` count that confirmation; the estimate's part is
``prediction.duration_s``), against halving's four. Goals: predicting >= 3x faster, no
OOM, batch size within one halving step (a factor of 2) of the halving search's.
Figures need a quiet machine: run alone.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

START = 1024
SHAPE = (48, 48, 3)
CLASSES = 10
TARGET = 190  # the largest batch the bound lets through, about


def _model():
    import keras

    model = keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def build():
    """The model and its input as shapes (the predicting search's description)."""
    return _model(), (((None, *SHAPE), "float32"), ((None,), "int32"))


def train(batch_size, limit=None):
    """One real training step at ``batch_size``; the loss.

    With ``limit``, a process whose peak RSS (the kernel's ``ru_maxrss``) passed it
    raises ``MemoryError``: the bound exact, as a container's is, where ``run_isolated``'s
    sampling of the RSS (every 0.1 s) can miss a step's short peak (it let batch 256 pass
    in one run, leaving halving two failing attempts instead of three).
    """
    import resource

    import numpy as np

    x = np.random.rand(batch_size, *SHAPE).astype("float32")
    y = np.random.randint(0, CLASSES, batch_size).astype("int32")
    history = _model().fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if limit is not None and peak > limit:
        raise MemoryError(f"peak RSS {peak:,} B passed {limit:,} B at batch {batch_size}")
    return float(history.history["loss"][-1])


def peak_at(batch_size):
    """Peak RSS of a fresh process that ran one step at ``batch_size``."""
    import resource

    train(batch_size)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _row(name, found, seconds):
    ooms = sum(a.outcome == "out of memory" for a in found.attempts)
    fresh = sum(not a.detail.startswith("in the estimate's child") for a in found.attempts)
    return {
        "strategy": name,
        "how": found.how,
        "seconds": round(seconds, 1),
        "attempts": len(found.attempts),
        "children": fresh + (found.prediction is not None),
        "out_of_memory": ooms,
        "batch_size": found.batch_size,
        "tried": [a.batch_size for a in found.attempts],
    }


def main() -> None:
    from keras_memguard import find_batch_size, run_isolated, shutdown_spares

    warm = "--keep-warm" in sys.argv  # both strategies start the next child early
    from keras_memguard.sizes import format_bytes

    with ThreadPoolExecutor(2) as pool:
        low, high = pool.map(lambda size: run_isolated(peak_at, size), (8, 256))
    bound = int(low + (high - low) * (TARGET - 8) / (256 - 8))
    print(
        f"peak at 8: {format_bytes(low)}, at 256: {format_bytes(high)}; bound {format_bytes(bound)}"
    )
    rows = []
    bounded = functools.partial(train, limit=bound)
    start = time.monotonic()
    halving = find_batch_size(bounded, START, max_memory=bound, keep_warm=warm)
    rows.append(_row("halving", halving, time.monotonic() - start))
    start = time.monotonic()
    predicting = find_batch_size(bounded, START, build=build, max_memory=bound, keep_warm=warm)
    rows.append(_row("predicting", predicting, time.monotonic() - start))
    shutdown_spares()
    for row in rows:
        print(json.dumps(row))
    print("prediction:", predicting.prediction)
    halving_ooms = sum(a.outcome == "out of memory" for a in halving.attempts)
    print(f"halving's failing attempts: {halving_ooms} (the set-up needs >= 3)")
    in_child = predicting.attempts[0]
    print(
        f"  estimate (its child's start to the pick): {predicting.prediction.duration_s:.1f} s; "
        f"first attempt ({in_child.detail or 'in a fresh child'}): {in_child.duration_s:.1f} s"
    )
    speedup = rows[0]["seconds"] / rows[1]["seconds"]
    low_size, high_size = sorted((halving.batch_size, predicting.batch_size))
    print(
        f"speed-up {speedup:.1f}x (goal >= 3x); predicting OOMs: {rows[1]['out_of_memory']} "
        f"(goal 0); within one halving step: {high_size <= 2 * low_size}"
    )


if __name__ == "__main__":
    main()
