"""Module-level functions for run_isolated tests (a child process must import them)."""

from __future__ import annotations

import os
import sys
import time

MIB = 2**20


def add(a, b):
    return a + b


def fail(message):
    raise ValueError(message)


class Unpicklable(Exception):
    def __init__(self):
        super().__init__("carries a lambda")
        self.callback = lambda: None


def fail_unpicklably():
    raise Unpicklable()


def return_a_lambda():
    return lambda: None


def sleep(seconds):
    time.sleep(seconds)
    return "woke"


def leak(mib_per_step=50, steps=200, delay=0.02):
    held = []
    for _ in range(steps):
        held.append(b"x" * (mib_per_step * MIB))
        time.sleep(delay)
    return len(held)


def kill_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(10)


def exit_with(code):
    os._exit(code)


def read_env(name):
    return os.environ.get(name)


def child_state():
    from keras_memguard.isolation import run as isolation

    return str(isolation.child_gpu_report), "tensorflow" in sys.modules


def train_with_batch(batch_size, mib_per_example=4, headroom_mib=300):
    """Holds memory that scales with the batch size, under a guard that raises."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from keras_memguard import MemGuardCallback, snapshot

    x = np.random.rand(256, 8).astype("float32")
    y = (x.sum(1) > 4).astype("int32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:32], y[:32], verbose=0)
    bound = snapshot().process_tree + headroom_mib * MIB
    activations = []

    class Activations(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not activations:  # like a model's activations at this batch size
                activations.append(b"x" * (batch_size * mib_per_example * MIB))

    guard = MemGuardCallback(
        max_process_memory=bound,
        on_exceed="raise",
        check_every_n_batches=1,
        verbose=0,
        release_on_train_end=False,
    )
    history = model.fit(
        x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=[Activations(), guard]
    )
    return float(history.history["loss"][-1])


def pid_and_env(name):
    return os.getpid(), os.environ.get(name), "json" in sys.modules
