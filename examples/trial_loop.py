"""Memory across a hyperparameter / k-fold loop: plain, release_memory, run_isolated.

Each trial builds, compiles and fits a fresh small model, as a search or a k-fold
loop does. Without help the process grows every trial (Keras and TensorFlow keep
traced graphs and global state); `release_memory(clear_session=True)` between trials
recovers part of it. `run_isolated` runs each trial in its own process: the driver
does not grow at all, at the price of starting a process (and importing TensorFlow)
per trial.

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


def load(examples: int, data_dir: str | None):
    import numpy as np
    import tensorflow_datasets as tfds

    import keras_memguard  # noqa: F401  (registers memguard_shapes)

    ds = tfds.load(
        "memguard_shapes",
        split=f"train[:{examples}]",
        as_supervised=True,
        data_dir=data_dir,
        batch_size=-1,
    )
    x, y = (np.asarray(t) for t in tfds.as_numpy(ds))
    return x.astype("float32") / 255.0, y


def isolated_trial(units: int, examples: int, data_dir: str | None) -> float:
    """One trial in a child process: loads its data, trains, returns the accuracy."""
    x, y = load(examples, data_dir)
    return train_one(x, y, units)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    import keras_memguard as mg

    # The isolated loop first, while this process has not even imported TensorFlow.
    rss: dict[str, list[float]] = {"run_isolated": []}
    base = mg.snapshot().process_rss or 0
    for trial in range(args.trials):
        mg.run_isolated(isolated_trial, 8 + trial, args.examples, args.data_dir)
        rss["run_isolated"].append(((mg.snapshot().process_rss or 0) - base) / 2**20)

    x, y = load(args.examples, args.data_dir)
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

    print("driver process growth since the loop began (MiB)")
    print(f"{'trial':<8}{'plain':>10}{'release_memory':>18}{'run_isolated':>16}")
    for trial in range(args.trials):
        print(
            f"{trial:<8}{rss['plain'][trial]:>10.1f}{rss['release_memory'][trial]:>18.1f}"
            f"{rss['run_isolated'][trial]:>16.1f}"
        )
    for mode, values in rss.items():
        per_trial = values[-1] / len(values) if values else 0.0
        print(f"{mode}: {per_trial:.1f} MiB per trial")
    return rss


if __name__ == "__main__":
    main()
