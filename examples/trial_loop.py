"""Memory across a hyperparameter / k-fold loop: with and without release_memory.

Each trial builds, compiles and fits a fresh small model, as a search or a k-fold
loop does. Without help the process grows every trial (Keras and TensorFlow keep
traced graphs and global state); `release_memory(clear_session=True)` between trials
recovers part of it. Running each trial in its own process is the full fix.

Run:  python examples/trial_loop.py [--trials 5]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def train_one(x, y, units: int) -> float:
    import keras

    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            keras.layers.Conv2D(units, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    return float(history.history["accuracy"][-1])


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow_datasets as tfds

    import keras_memguard as mg

    ds = tfds.load(
        "memguard_shapes",
        split=f"train[:{args.examples}]",
        as_supervised=True,
        data_dir=args.data_dir,
        batch_size=-1,
    )
    x, y = (np.asarray(t) for t in tfds.as_numpy(ds))
    x = x.astype("float32") / 255.0

    rss: dict[str, list[float]] = {}
    for mode in ("plain", "release_memory"):
        train_one(x, y, 8)  # warm-up: the first fit's one-off costs are not growth
        mg.release_memory(clear_session=True)
        base = mg.snapshot().process_rss or 0
        rss[mode] = []
        for trial in range(args.trials):
            train_one(x, y, 8 + trial)
            if mode == "release_memory":
                mg.release_memory(clear_session=True)
            rss[mode].append(((mg.snapshot().process_rss or 0) - base) / 2**20)

    print(f"{'trial':<8}{'growth, plain (MiB)':>22}{'with release_memory (MiB)':>28}")
    for trial in range(args.trials):
        print(f"{trial:<8}{rss['plain'][trial]:>22.1f}{rss['release_memory'][trial]:>28.1f}")
    for mode, values in rss.items():
        per_trial = values[-1] / len(values) if values else 0.0
        print(f"{mode}: {per_trial:.1f} MiB per trial")
    return rss


if __name__ == "__main__":
    main()
