"""The epoch timer the benchmarks share (they run as scripts: ``from _timing import``).

Example:
    >>> timer = EpochTimer()
    >>> model.fit(x, y, epochs=3, callbacks=[guard, timer])  # after what it times
    >>> timer.seconds
"""

from __future__ import annotations

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch, begin hook to end hook.

    Listed after the callbacks it should time, so that their epoch-end work counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
