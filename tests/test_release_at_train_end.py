"""The train-end release with the guard's defaults: a full collection only where it can
matter, and memory held by garbage cycles still returned after a fit that grew.

Real fits, real NumPy arrays, RSS read from /proc; the decision itself is a pure
function (`train_end_release`) checked on hand-made snapshots.
"""

from __future__ import annotations

import gc

import keras
import numpy as np
import pytest
from training import tiny_data, tiny_model

from keras_memguard import MemGuardCallback, release_memory
from keras_memguard.guard.policy import train_end_release
from keras_memguard.memory_snapshot import MemorySnapshot
from keras_memguard.probes.process import read_process_memory

pytestmark = pytest.mark.backends
MIB, GIB = 2**20, 2**30
ARRAY_MIB = 40  # above glibc's largest mmap threshold (32 MiB): freed pages leave RSS at once


def rss() -> int:
    memory = read_process_memory()
    assert memory is not None
    return memory.rss


class Cycles(keras.callbacks.Callback):
    """Holds reference cycles with large arrays during the fit, drops them at its end.

    The cycles survive a collection while reachable, so they sit in the oldest
    generation, where only a full collection finds them once they are garbage.
    """

    def __init__(self, arrays_per_epoch: int = 2) -> None:
        super().__init__()
        self.arrays_per_epoch = arrays_per_epoch
        self.held: list[dict] = []
        self.rss_holding = 0

    def on_epoch_begin(self, epoch, logs=None):
        for _ in range(self.arrays_per_epoch):
            node: dict = {"array": np.ones(ARRAY_MIB * MIB // 8)}
            node["self"] = node  # a cycle: reference counting alone never frees it
            self.held.append(node)
        gc.collect()  # reachable now: promoted to the oldest generation

    def on_train_end(self, logs=None):
        self.rss_holding = rss()
        self.held.clear()  # the cycles are garbage now, but still in memory


def fit(callbacks, model=None, epochs=2):
    model = model or tiny_model()
    x, y = tiny_data(samples=64)
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=callbacks)
    return model


@pytest.fixture(scope="module")
def model():
    return fit([])  # traced once, so later fits grow only by what the test holds


def test_default_guard_returns_memory_held_by_garbage_cycles(model):
    cycles, guard = Cycles(), MemGuardCallback()  # the defaults, listed after the holder
    fit([cycles, guard], model)
    held = 2 * 2 * ARRAY_MIB * MIB
    assert cycles.rss_holding - rss() > 0.75 * held
    assert guard.summary.release.generation == 2  # a full collection, as it grew
    assert guard.summary.release.freed > 0.75 * held


def test_young_collection_alone_does_not_free_them(model):
    """Why the full collection is needed: the cycles outlive a young one."""
    cycles = Cycles()
    fit([cycles, MemGuardCallback(release_on_train_end=False)], model)
    held = 2 * 2 * ARRAY_MIB * MIB
    young = release_memory(generation=1)
    assert young.rss_after is not None and cycles.rss_holding - young.rss_after < 0.25 * held
    full = release_memory()
    assert full.freed > 0.75 * held


def test_a_fit_that_did_not_grow_costs_only_a_young_collection(model):
    guard = MemGuardCallback()
    fit([guard], model)
    assert guard.summary.release.generation == 1


def snap(tree: int | None, available: int = 8 * GIB) -> MemorySnapshot:
    return MemorySnapshot(
        timestamp=0.0,
        process_rss=tree,
        process_tree=tree,
        system_total=16 * GIB,
        system_available=available,
    )


@pytest.mark.parametrize(
    ("start", "now", "available", "full"),
    [
        (500 * MIB, 560 * MIB, 8 * GIB, False),  # grew 60 MiB: under the 64 MiB floor
        (500 * MIB, 580 * MIB, 8 * GIB, True),  # grew 80 MiB
        (4 * GIB, 4 * GIB + 150 * MIB, 8 * GIB, False),  # under 5% of 4 GiB (205 MiB)
        (4 * GIB, 4 * GIB + 300 * MIB, 8 * GIB, True),
        (500 * MIB, 500 * MIB, GIB, True),  # 1 of 16 GiB available: low
        (None, 500 * MIB, 8 * GIB, True),  # unknown start: collect fully, as before
    ],
)
def test_full_collection_decision(start, now, available, full):
    reason = train_end_release(start, snap(now, available))
    assert (reason is not None) == full


def test_release_memory_rejects_a_bad_generation():
    with pytest.raises(ValueError, match="`generation`"):
        release_memory(generation=3)
