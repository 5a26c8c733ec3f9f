"""Tiny real Keras models and data for tests, TensorBoard event reading, and training
scripts run in a fresh Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np

from keras_memguard.cli.report import read_run


def tiny_data(samples: int = 256, features: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((samples, features), dtype=np.float32)
    y = (x.sum(axis=1) > features / 2).astype("int32")
    return x, y


def tiny_model(features: int = 8) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class Leak(keras.callbacks.Callback):
    """Holds fresh memory per batch of a phase (or per epoch), like a real leak would.

    ``mib_per_batch`` leaks in training batches, ``mib_per_test_batch`` in validation
    and ``evaluate()`` batches, ``mib_per_predict_batch`` in ``predict()`` batches.
    ``batches`` counts the batch ends seen per phase.
    """

    def __init__(
        self,
        mib_per_batch: int = 0,
        mib_per_epoch: int = 0,
        mib_per_test_batch: int = 0,
        mib_per_predict_batch: int = 0,
    ) -> None:
        super().__init__()
        self.mib_per_batch, self.mib_per_epoch = mib_per_batch, mib_per_epoch
        self.mib_per_test_batch = mib_per_test_batch
        self.mib_per_predict_batch = mib_per_predict_batch
        self.held: list[bytes] = []
        self.batches = {"train": 0, "test": 0, "predict": 0}

    def _hold(self, mib: int) -> None:
        if mib:
            self.held.append(b"x" * (mib * 2**20))

    def on_train_batch_end(self, batch, logs=None):
        self.batches["train"] += 1
        self._hold(self.mib_per_batch)

    def on_test_batch_end(self, batch, logs=None):
        self.batches["test"] += 1
        self._hold(self.mib_per_test_batch)

    def on_predict_batch_end(self, batch, logs=None):
        self.batches["predict"] += 1
        self._hold(self.mib_per_predict_batch)

    def on_epoch_end(self, epoch, logs=None):
        self._hold(self.mib_per_epoch)


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Every memory scalar in a run directory's event files: {tag: [(step, value), ...]}."""
    return read_run(run_dir).scalars


def read_texts(run_dir: str, tag: str = "memory/halt") -> list[str]:
    assert tag == "memory/halt"
    return read_run(run_dir).halts


TESTS = os.path.dirname(os.path.abspath(__file__))


def run_script(
    script: str, *args: object, workdir: object, timeout: float = 300, **env: str
) -> tuple[dict, str]:
    """Runs ``tests/<script> *args workdir`` in a fresh Python with ``env`` added.

    Returns the ``workdir/result.json`` the script wrote, and its stderr. The tests'
    directory and the repository come first on the script's path.

    Example:
        >>> result, stderr = run_script("backend_fit.py", workdir=tmp, KERAS_BACKEND="jax")
    """
    path = os.pathsep.join([TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, os.path.join(TESTS, script), *map(str, args), str(workdir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env, "PYTHONPATH": path},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(str(workdir), "result.json")) as f:
        return json.load(f), proc.stderr


def marked_site(script: str, name: str) -> str:
    """``file:line`` of the line of ``tests/<script>`` that ends in ``# SITE: name``.

    Example:
        >>> marked_site("growth_training.py", "numpy")
        '/.../tests/growth_training.py:57'
    """
    path = os.path.join(TESTS, script)
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# SITE: {name}"):
                return f"{path}:{number}"
    raise AssertionError(f"no '# SITE: {name}' line in {path}")


def run_scenario(script: str, scenario: str, workdir: object) -> dict:
    """``run_script(script, scenario)`` on this backend: its result, its stderr under ``"stderr"``.

    Example:
        >>> run_scenario("leak_sites_training.py", "numpy", tmp_path)["backend"]
        'tensorflow'
    """
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    result, stderr = run_script(
        script, scenario, workdir=workdir, timeout=600, KERAS_BACKEND=backend
    )
    assert result["backend"] == backend
    result["stderr"] = stderr
    return result
