"""Module-level build and training functions for the batch-size search's tests.

``build`` describes the model and its input by shapes (the predicting search's side);
``train`` runs one real step of the same model at a batch size (what each attempt, and
the confirmation, run in a child). ``build_untraceable`` is a model whose step reads a
value out of the graph, so its step estimate is unknown.

With ``BATCH_SEARCH_RECORD`` (a file) in the child's environment, ``build`` and ``train``
append ``"<what> <pid> <batch size>"`` to it: which processes ran what. With
``BATCH_SEARCH_BALLAST``, ``train`` allocates memory until ``run_isolated`` stops it at
``max_memory`` (the ``limit`` it is given): ``"estimate"`` in a process that also ran
``build`` (the estimate's child: its leftovers larger than its figures said),
``"predicted"`` at a batch size at least the first one recorded (the prediction's).
With ``BATCH_SEARCH_FAIL``, ``train`` raises ``RuntimeError`` (not about memory):
``"estimate"`` in the estimate's child only, ``"always"`` everywhere; with ``"exit"``,
``train`` ends the estimate's child with ``sys.exit(0)``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHAPE = (48, 48, 3)
CLASSES = 4
MIB = 2**20
_built = False  # build() ran in this process


def _model(untraceable: bool = False):
    import keras

    layers = [
        keras.Input(SHAPE),
        keras.layers.Conv2D(24, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(24, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ]
    if untraceable:
        layers.insert(1, _reads_a_value())
    model = keras.Sequential(layers)
    model.compile("adam", "sparse_categorical_crossentropy", run_eagerly=untraceable)
    return model


def build():
    """The model and its input as shapes: what the predicting search estimates."""
    global _built
    _built = True
    _record("build", None)
    return _model(), (((None, *SHAPE), "float32"), ((None,), "int32"))


def _record(what, batch_size):
    path = os.environ.get("BATCH_SEARCH_RECORD")
    if path:
        with open(path, "a") as file:
            file.write(f"{what} {os.getpid()} {batch_size}\n")


def records(path):
    """``(what, pid, batch size)`` for each line ``build`` and ``train`` recorded."""
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(what, int(pid), None if size == "None" else int(size)) for what, pid, size in rows]


def _needs_ballast(batch_size):
    mode = os.environ.get("BATCH_SEARCH_BALLAST")
    if mode == "estimate":
        return _built
    if mode == "predicted":
        import pathlib

        trained = [
            size
            for what, _, size in records(pathlib.Path(os.environ["BATCH_SEARCH_RECORD"]))
            if what == "train"
        ]
        return batch_size >= trained[0]
    return False


def _fill_until_stopped(limit):
    """Real pages, 16 MiB at a time, to 64 MiB past ``limit``; then wait to be stopped."""
    import time

    import numpy as np
    import psutil

    ballast = []
    while psutil.Process().memory_info().rss <= limit + 64 * MIB:
        ballast.append(np.ones(16 * MIB, np.uint8))
    time.sleep(30)  # run_isolated's watch stops this process within a poll or two
    raise MemoryError(f"{len(ballast) * 16} MiB of ballast past {limit:,} B was not stopped")


def build_untraceable():
    """A model no step estimate can follow. On TensorFlow it asks for XLA
    (``jit_compile=True``), as only then is the estimate used on the host: without XLA
    the search measures its line with two small real fits instead."""
    import keras

    model = _model(untraceable=True)
    if keras.backend.backend() == "tensorflow":
        model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)
    return model, (((None, *SHAPE), "float32"), ((None,), "int32"))


def train(batch_size, limit=None, untraceable=False):
    """One real training step at ``batch_size``; returns the loss.

    With ``limit``, a process whose peak RSS (the kernel's ``ru_maxrss``) passed it raises
    ``MemoryError``: the bound exact, as a container's would be, where the parent's
    sampling of the RSS (every 0.1 s) can miss a step's short peak.
    """
    import resource

    import numpy as np

    _record("train", batch_size)
    fail = os.environ.get("BATCH_SEARCH_FAIL")
    if fail == "always" or (fail == "estimate" and _built):
        raise RuntimeError(f"train failed at batch {batch_size} ({fail})")
    if fail == "exit" and _built:
        sys.exit(0)
    if limit is not None and _needs_ballast(batch_size):
        _fill_until_stopped(limit)
    model = _model(untraceable)
    x = np.random.rand(batch_size, *SHAPE).astype("float32")
    y = np.random.randint(0, CLASSES, batch_size).astype("int32")
    history = model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if limit is not None and peak > limit:
        raise MemoryError(f"peak RSS {peak:,} B passed {limit:,} B at batch {batch_size}")
    return float(history.history["loss"][-1])


def _reads_a_value():
    import keras

    class ReadsAValue(keras.layers.Layer):
        """Reads a value out of the step (``float()``): no compiler or trace can follow."""

        def call(self, x):
            float(keras.ops.convert_to_numpy(keras.ops.mean(x)))
            return x

        def compute_output_spec(self, x):  # building the model symbolically calls no `call`
            return keras.KerasTensor(x.shape, x.dtype)

    return ReadsAValue()


def peak_at(batch_size):
    """The peak RSS of a fresh process that ran one step at ``batch_size``."""
    import resource

    train(batch_size)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
