"""A KerasTuner search whose driver stays flat: every trial in a fresh process.

KerasTuner builds and fits every trial in the searching process, which grows a few MiB a
trial even though KerasTuner clears the session before each one (keras-tuner issues
#395, #873), and on a GPU never hands memory back. `isolate_trials(tuner)` runs each
trial's build-and-fit in its own process; the oracle, the trial records, checkpoints,
`get_best_models()` and `search()`'s arguments work as before. A trial over
`--max-memory` is recorded as failed and the search goes on.

The build function lives right here in `__main__`: it travels to each trial by value.

Needs: pip install "keras-memguard[tuner]" scikit-learn
Run:   python examples/tuner_isolated.py [--trials 10] [--keep-warm] [--max-memory 4GiB]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(hp):
    import keras

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(hp.Int("units", 16, 128, step=16), activation="relu"),
            keras.layers.Dropout(hp.Float("dropout", 0.0, 0.4, step=0.2)),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    learning_rate = hp.Choice("learning_rate", [1e-3, 3e-3, 1e-2])
    model.compile(
        keras.optimizers.Adam(learning_rate),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--keep-warm", action="store_true", help="ready the next trial early")
    parser.add_argument("--max-memory", default=None, help="bound per trial, e.g. 4GiB")
    parser.add_argument("--directory", default=None, help="KerasTuner's project directory")
    args = parser.parse_args(argv)

    import keras_tuner
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import keras_memguard as mg

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=0)

    directory = args.directory or tempfile.mkdtemp(prefix="tuner-isolated-")
    tuner = keras_tuner.RandomSearch(
        build,
        objective="val_accuracy",
        max_trials=args.trials,
        directory=directory,
        project_name="digits",
        overwrite=True,
        seed=0,
    )
    mg.isolate_trials(tuner, keep_warm=args.keep_warm, max_memory=args.max_memory)

    rss: list[float] = []
    on_trial_end = tuner.on_trial_end

    def note_memory(trial):  # the driver's memory after each trial
        on_trial_end(trial)
        rss.append((mg.snapshot(gpus=False).process_rss or 0) / 2**20)

    tuner.on_trial_end = note_memory
    tuner.search(
        x_train,
        y_train,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        verbose=0,
        # A guard inside every trial: KerasTuner copies it into each trial's process.
        callbacks=[mg.MemGuardCallback(max_process_memory=args.max_memory, verbose=0)],
    )
    mg.shutdown_spares()

    best_hp = tuner.get_best_hyperparameters()[0]
    best = tuner.get_best_models()[0]
    accuracy = float(best.evaluate(x_val, y_val, verbose=0)[1])
    growth = (rss[-1] - rss[0]) / max(1, len(rss) - 1)
    print(f"best hyperparameters: {best_hp.values}")
    print(f"best model's validation accuracy: {accuracy:.3f}")
    print(f"driver growth after the first trial: {growth:.2f} MiB per trial")
    return {"accuracy": accuracy, "growth_mib_per_trial": growth}


if __name__ == "__main__":
    main()
