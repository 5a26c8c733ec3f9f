"""Tiny real Keras models and data for tests, and TensorBoard event reading."""

from __future__ import annotations

import glob
import os

import keras
import numpy as np


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
    """Holds `mib_per_batch` (or per epoch) of fresh memory, like a real leak would."""

    def __init__(self, mib_per_batch: int = 0, mib_per_epoch: int = 0) -> None:
        super().__init__()
        self.mib_per_batch, self.mib_per_epoch = mib_per_batch, mib_per_epoch
        self.held: list[bytes] = []

    def on_train_batch_end(self, batch, logs=None):
        if self.mib_per_batch:
            self.held.append(b"x" * (self.mib_per_batch * 2**20))

    def on_epoch_end(self, epoch, logs=None):
        if self.mib_per_epoch:
            self.held.append(b"x" * (self.mib_per_epoch * 2**20))


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run directory's event files: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    result: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        acc = EventAccumulator(path, size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            for event in acc.Tensors(tag):
                value = tensor_util.make_ndarray(event.tensor_proto)
                if value.shape == () and value.dtype.kind == "f":
                    result.setdefault(tag, []).append((event.step, float(value)))
    return result


def read_texts(run_dir: str, tag: str) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    texts = []
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        acc = EventAccumulator(path, size_guidance={"tensors": 0})
        acc.Reload()
        if tag in acc.Tags()["tensors"]:
            for event in acc.Tensors(tag):
                value = tensor_util.make_ndarray(event.tensor_proto)
                texts.append(value.item().decode() if value.shape == () else str(value))
    return texts
