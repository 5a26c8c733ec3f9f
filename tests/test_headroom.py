"""The guard's projection, save headroom and cadence as pure functions (issue #23)."""

import pytest

from keras_memguard.guard.headroom import (
    SAVE_COST,
    Reading,
    growth_per_batch,
    outlook,
    reading,
    save_headroom,
    temporary_path,
)
from keras_memguard.guard.policy import Bounds, Halt, default_floor
from keras_memguard.memory_snapshot import GpuSnapshot, MemorySnapshot
from keras_memguard.sizes import parse_size

MIB, GIB = 2**20, 2**30
AUTO = Bounds(auto_floor=True)  # MemGuardCallback() with no arguments


def container(used, limit=GIB, tree=None, gpus=()):
    return MemorySnapshot(
        timestamp=0.0,
        process_tree=used if tree is None else tree,
        system_total=64 * GIB,
        system_available=60 * GIB,
        container_limit=limit,
        container_working_set=used,
        gpus=gpus,
    )


def test_save_headroom_per_format_from_the_measured_figures():
    # Measured (docs/callback.md): 576 MiB of state, largest variable 64 MiB, on all three
    # backends: .keras +704 MiB RSS, .weights.h5 +128 MiB.
    assert save_headroom("a.keras", 576 * MIB, 64 * MIB) == 704 * MIB
    assert save_headroom("a.weights.h5", 576 * MIB, 64 * MIB) == 128 * MIB
    assert save_headroom(None, 576 * MIB, 64 * MIB) == 0
    assert set(SAVE_COST) == {".keras", ".weights.h5"}


def test_the_save_is_reserved_in_the_halt_decision():
    # 1 GiB container, 800 MiB used, growing 10 MiB a batch; floor 4%: 41 MiB.
    snap, rates = container(800 * MIB), {"used": 10 * MIB}
    assert outlook(AUTO, snap, rates, save=0).crossings == []
    # A 200 MiB save would not fit after the next batch: halt now, while it does.
    (crossing,) = outlook(AUTO, snap, rates, save=200 * MIB).crossings
    assert crossing.metric == "effective_available"
    assert crossing.parameter == "emergency_available_memory"
    assert (crossing.value, crossing.bound) == (224 * MIB, default_floor(GIB))
    assert crossing.reserve == 210 * MIB
    # The batch Keras still runs after a stop is reserved too.
    assert outlook(AUTO, container(970 * MIB), rates, extra_batches=0).crossings == []
    assert outlook(AUTO, container(970 * MIB), rates, extra_batches=1).crossings != []


def test_the_save_counts_against_max_process_memory_but_not_against_a_gpu():
    bounds = Bounds(max_process_memory=parse_size("900MiB", name="b"))
    snap = container(100 * MIB, tree=800 * MIB)
    (crossing,) = outlook(bounds, snap, {}, save=150 * MIB).crossings
    assert (crossing.metric, crossing.reserve) == ("process_tree", 150 * MIB)
    gpu = GpuSnapshot(index=0, total=16 * GIB, allocated=15 * GIB, limit=16 * GIB)
    gpu_only = Bounds(max_gpu_memory=parse_size("15.5GiB", name="b"))
    assert outlook(gpu_only, container(0, gpus=(gpu,)), {}, save=4 * GIB).crossings == []


def test_growth_per_batch_between_checks():
    before, after = Reading(3, {"used": 100 * MIB, "gpu0": GIB}), Reading(5, {"used": 300 * MIB})
    assert growth_per_batch(before, after) == {"used": 100 * MIB}
    assert growth_per_batch(after, Reading(7, {"used": 200 * MIB})) == {"used": 0.0}
    assert growth_per_batch(before, Reading(3, {"used": 0})) is None  # no batch between
    assert growth_per_batch(None, after) is None
    snap = container(300 * MIB, tree=250 * MIB)
    assert reading(snap, 4).figures == {"process_tree": 250 * MIB, "used": 300 * MIB}


def test_cadence_keeps_up_with_the_growth():
    far, fast = container(100 * MIB), {"used": 50 * MIB}
    assert outlook(AUTO, far, {}).batches_to_check is None  # no growth, far: by time
    # 924 MiB free, less the 41 MiB floor and the next batch (or two, after a stop),
    # at twice 50 MiB a batch: 8 batches (7).
    assert outlook(AUTO, far, fast).batches_to_check == 8
    assert outlook(AUTO, far, fast, extra_batches=1).batches_to_check == 7
    # Near the floor (within 5% of the limit), every batch even without growth.
    assert outlook(AUTO, container(960 * MIB), {}).batches_to_check == 1


def test_fast_growth_that_levels_off_below_the_limit_is_no_halt():
    # A cache filled at 50 MiB a batch (5% of the limit) up to 85% of it, then flat:
    # only the next two batches' growth is projected, never the speed alone.
    rates = {"used": 50 * MIB}
    look = outlook(AUTO, container(int(0.8 * GIB)), rates, extra_batches=1)
    assert look.crossings == [] and look.batches_to_check == 1
    assert outlook(AUTO, container(int(0.85 * GIB)), {"used": 0.0}).crossings == []


def test_default_floor_and_the_gpu_allocator_limit():
    assert default_floor(GIB) == int(0.04 * GIB)  # 4% of the limit,
    assert default_floor(512 * MIB) == 32 * MIB and default_floor(100 * GIB) == GIB  # in bounds
    # No GPU bound given: the allocator's pool limit (JAX's 75%, say) less its floor.
    gpu = GpuSnapshot(index=0, total=16 * GIB, allocated=23 * GIB // 2, limit=12 * GIB)
    (crossing,) = outlook(AUTO, container(0, gpus=(gpu,)), {"gpu0": 512 * MIB}).crossings
    assert crossing.metric == "gpu0_allocated" and crossing.parameter == "the GPU's limit"
    assert crossing.bound == 12 * GIB - default_floor(12 * GIB)
    assert outlook(Bounds(), container(0, gpus=(gpu,)), {"gpu0": 512 * MIB}).crossings == []


@pytest.mark.parametrize(
    ("path", "scratch"),
    [("d/g.keras", "d/g.tmp.keras"), ("g.weights.h5", "g.tmp.weights.h5")],
)
def test_temporary_path_keeps_the_suffix_keras_requires(path, scratch):
    assert temporary_path(path) == scratch


def test_a_halt_before_the_crossing_says_what_was_reserved():
    halt = Halt("effective_available", 100 * MIB, 32 * MIB, 0, 3, "stop", None, reserve=80 * MIB)
    assert halt.describe() == (
        "effective_available 100.0 MiB would have fallen below the bound 32.0 MiB by the "
        "next check (32.0 MiB + 80.0 MiB reserved for the growth until training stops and "
        "the save) at epoch 0, batch 3"
    )


def test_with_several_workers_the_cadence_goes_by_the_vote(monkeypatch):
    """Every worker must check at the same steps: a faster cadence comes from the vote."""
    from training import tiny_data, tiny_model

    from keras_memguard import MemGuardCallback
    from keras_memguard.guard import callback as callback_module

    guard = MemGuardCallback()
    votes = []

    from keras_memguard.backends.base import WorkerContext

    class TwoWorkers(WorkerContext):
        """This worker, and another that asks for every batch at its votes 3 to 5."""

        def any_workers(self, flags):
            votes.append(guard._hooks - 1)  # the batch about to run
            other_near = 3 <= len(votes) - 1 <= 5
            return flags[0], flags[1] or other_near

    monkeypatch.setattr(callback_module, "worker_context", lambda model: TwoWorkers(num_workers=2))
    x, y = tiny_data(samples=32 * 24)
    tiny_model().fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[guard])
    # Batches 0-2: the first checks of a fit (every worker alike); 3-6: the other worker
    # asked; then every 10 batches; the last vote is the epoch's end (after batch 23).
    assert votes == [0, 1, 2, 3, 4, 5, 6, 16, 23]
