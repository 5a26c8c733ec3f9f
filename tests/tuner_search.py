"""A KerasTuner search as a user writes it: a script, the build function in its
``__main__``, no ``if __name__ == "__main__":`` guard. The tuner tests run it as a
subprocess and read the JSON line it prints.

Usage: python tests/tuner_search.py MODE TRIALS DIRECTORY
MODE: plain | isolated | warm | hyperband (isolated, with a guard) |
      bounded (isolated BayesianOptimization, max_memory="1GiB", 2 executions a trial)
"""

import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import keras_tuner
import numpy as np
from sklearn.datasets import load_digits

import keras_memguard as mg
from keras_memguard.isolation import run as isolation
from keras_memguard.probes.process import read_process_memory

MODE, TRIALS, DIRECTORY = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")
builds = []


def build(hp):
    builds.append(1)  # counts builds in this process: none when trials are isolated
    units = hp.Int("units", 8, 64, step=8)
    if MODE == "bounded" and units >= 40:  # grows 100 MiB at a time, far past the bound
        held = []
        for _ in range(25):
            held.append(np.ones(100 * 2**20 // 8))
            time.sleep(0.05)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


if MODE == "hyperband":
    tuner = keras_tuner.Hyperband(
        build,
        "val_accuracy",
        max_epochs=2,
        factor=2,
        hyperband_iterations=1,
        directory=DIRECTORY,
        project_name=MODE,
        overwrite=True,
        seed=1,
    )
elif MODE == "bounded":  # BayesianOptimization: its model of the space lives in the driver
    tuner = keras_tuner.BayesianOptimization(
        build,
        "val_accuracy",
        max_trials=TRIALS,
        num_initial_points=2,
        directory=DIRECTORY,
        project_name=MODE,
        overwrite=True,
        seed=1,
        max_consecutive_failed_trials=TRIALS,
        executions_per_trial=2,
    )
else:
    tuner = keras_tuner.RandomSearch(
        build,
        "val_accuracy",
        max_trials=TRIALS,
        directory=DIRECTORY,
        project_name=MODE,
        overwrite=True,
        seed=1,
        max_consecutive_failed_trials=TRIALS,
    )
if MODE != "plain":
    mg.isolate_trials(
        tuner,
        keep_warm=MODE in ("warm", "hyperband"),
        max_memory="1GiB" if MODE == "bounded" else None,
        share_arrays_over=64 * 1024,  # x (450 KiB) travels as a memory-mapped file
    )

rss = []
on_trial_end = tuner.on_trial_end


def record(trial):
    on_trial_end(trial)
    rss.append(read_process_memory().rss)


tuner.on_trial_end = record
log_dir = os.path.join(DIRECTORY, "memguard-logs")
callbacks = [mg.MemGuardCallback(log_dir, verbose=0)] if MODE == "hyperband" else []
tuner.search(x, y, epochs=1, validation_split=0.2, verbose=0, callbacks=callbacks)
spares_left = len(isolation._spares)  # isolate_trials ends its spare with the search
mg.shutdown_spares()
best = tuner.get_best_models()[0]
accuracy = float(best.evaluate(x, y, verbose=0)[1])
trials = tuner.oracle.trials.values()
print(
    json.dumps(
        {
            "statuses": sorted(str(t.status) for t in trials),
            "messages": [t.message for t in trials if t.message],
            "rss": rss,
            "builds_here": len(builds),
            "best_accuracy": accuracy,
            "best_units": tuner.get_best_hyperparameters()[0].values["units"],
            "units": [t.hyperparameters.values["units"] for t in trials],
            "trial_ids": [t.trial_id for t in trials],
            "spares_left": spares_left,
            "resumed": sum("tuner/trial_id" in t.hyperparameters.values for t in trials),
            "guard_logs": sorted(
                os.path.relpath(os.path.join(root, name), log_dir)
                for root, _, names in os.walk(log_dir)
                for name in names
            ),
            "epochs": sorted(int(t.hyperparameters.values.get("tuner/epochs", 0)) for t in trials),
        }
    )
)
