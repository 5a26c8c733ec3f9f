"""Parent-process memory growth per trial: in-process with release_memory vs run_isolated,
and a KerasTuner RandomSearch plain vs isolate_trials.

Run: python benchmarks/bench_trials.py [TRIALS] [--tuner-only] [--backend jax]
Part 1: each trial builds, compiles and fits a small CNN for one epoch, as a
hyperparameter search or a k-fold loop does. Side by side: the parent's RSS growth per
trial and the wall time per trial. The isolated side runs first, while the parent has
not imported TensorFlow at all, which is how a driver script using run_isolated looks.
With keep_warm=True a spare child imports TensorFlow while the current trial runs.
Part 2: a KerasTuner RandomSearch over sklearn's digits (1 epoch a trial), each mode in
its own fresh driver process: plain, isolate_trials, isolate_trials(keep_warm=True).
Growth is measured from the end of the first trial to the end of the last. Part 3: what
one trial sends through the pipe for a 64 MiB training set, by value and shared.
Goal: isolated growth <= 0.5 MiB per trial.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
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


def rss_mib() -> float:
    mem = read_process_memory()
    return (mem.rss if mem else 0) / 2**20


def measure(run_one, trials: int) -> tuple[float, float]:
    run_one(0)  # warm-up: one-off costs are not growth
    base, start = rss_mib(), time.perf_counter()
    for index in range(trials):
        run_one(index + 1)
    seconds = (time.perf_counter() - start) / trials
    return (rss_mib() - base) / trials, seconds


def tuner_driver(mode: str, trials: int, directory: str) -> None:
    """One KerasTuner search in this (fresh) process; prints RSS after each trial."""
    import keras
    import keras_tuner
    from sklearn.datasets import load_digits

    from keras_memguard import isolate_trials

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")

    def build(hp):
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(hp.Int("units", 8, 64, step=8), activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    tuner = keras_tuner.RandomSearch(
        build,
        "val_accuracy",
        max_trials=trials,
        directory=directory,
        project_name=mode,
        overwrite=True,
        seed=0,
    )
    if mode != "plain":
        isolate_trials(tuner, keep_warm=mode == "keep_warm")
    marks: list[tuple[float, float]] = []
    on_trial_end = tuner.on_trial_end

    def record(trial):
        on_trial_end(trial)
        marks.append((rss_mib(), time.perf_counter()))

    tuner.on_trial_end = record
    tuner.search(x, y, epochs=1, validation_split=0.2, verbose=0)
    print(json.dumps(marks))


def tuner_comparison(trials: int, backend: str) -> None:
    print(f"\nKerasTuner RandomSearch, {trials} trials, digits, KERAS_BACKEND={backend}")
    print(f"{'':<36}{'MiB/trial':>10}{'s/trial':>10}")
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for mode in ("plain", "isolate_trials", "keep_warm"):
            env = {**os.environ, "KERAS_BACKEND": backend}
            out = subprocess.run(
                [sys.executable, __file__, "--tuner-driver", mode, str(trials), directory],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
            marks = json.loads(out.strip().splitlines()[-1])
            (rss0, t0), (rss1, t1) = marks[0], marks[-1]
            results[mode] = ((rss1 - rss0) / (len(marks) - 1), (t1 - t0) / (len(marks) - 1))
            print(f"{mode:<36}{results[mode][0]:>10.2f}{results[mode][1]:>10.2f}")
    worst = max(results["isolate_trials"][0], results["keep_warm"][0])
    print(f"goal: isolated growth <= 0.5 MiB/trial -> {'met' if worst <= 0.5 else 'NOT met'}")


def array_transfer() -> None:
    """What one trial's payload costs for a 64 MiB training set, by value and shared."""
    import numpy as np

    from keras_memguard.isolation._transfer import pack
    from keras_memguard.isolation.tuner import _Isolation, _restore

    x = np.random.default_rng(0).random((16 * 2**20 // 4, 4), dtype=np.float32)  # 64 MiB
    args = (x, x[:, 0].copy())
    state = _Isolation({}, share_over=2**20)
    state.share(args)  # the once-per-search write, not counted per trial
    print("\none trial's arguments through the pipe (64 MiB + 16 MiB arrays)")
    for name, prepare in (("by value", lambda: args), ("shared (mmap)", lambda: state.share(args))):
        start = time.perf_counter()
        _, data = pack(len, prepare(), {})  # what run_isolated sends to the child
        _restore(pickle.loads(data)[1])
        seconds = time.perf_counter() - start
        print(f"{name:<36}{len(data) / 2**20:>10.2f} MiB{seconds * 1000:>10.1f} ms")
    state.release()


def main() -> None:
    if sys.argv[1:2] == ["--tuner-driver"]:
        tuner_driver(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "jax"
    args = [a for a in args if a != backend]
    trials = int(args[0]) if args else 10
    if "--tuner-only" in sys.argv:
        tuner_comparison(trials, backend)
        array_transfer()
        return
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
    print(f"{'':<36}{'MiB/trial':>10}{'s/trial':>10}")
    print(f"{'in-process + release_memory':<36}{inline[0]:>10.2f}{inline[1]:>10.2f}")
    print(f"{'run_isolated':<36}{isolated[0]:>10.2f}{isolated[1]:>10.2f}")
    print(f"{'run_isolated(keep_warm=True)':<36}{warm[0]:>10.2f}{warm[1]:>10.2f}")
    print(f"child start-up (spawn + import tensorflow): {startup:.2f} s")
    verdict = "met" if max(isolated[0], warm[0]) <= 0.5 else "NOT met"
    print(f"goal: isolated growth <= 0.5 MiB/trial -> {verdict}")
    tuner_comparison(trials, backend)
    array_transfer()


if __name__ == "__main__":
    main()
