"""The workers' vote (guard/distributed.py): each worker's row, what all of them decide."""

from __future__ import annotations

import warnings

import pytest

from keras_memguard.backends.base import WorkerContext
from keras_memguard.errors import MemGuardWarning, reset_warnings
from keras_memguard.guard.distributed import (
    ANOTHER_WORKER,
    Vote,
    decode_rows,
    encode_row,
    vote,
)
from keras_memguard.guard.policy import Crossing, Halt
from keras_memguard.memory_snapshot import MIB

GIB = 1024 * MIB
TREE = Crossing("process_tree", "max_process_memory", 5 * GIB + 3, 4 * GIB, reserve=16 * MIB)


def test_a_row_carries_the_crossing_exactly_beyond_int32():
    row = encode_row([TREE], near=False)
    assert all(-(2**31) <= v < 2**31 for v in row)  # one int32 all-gather
    assert decode_rows([tuple(row)]) == Vote(TREE, 0, False)


def test_the_lowest_process_that_crossed_is_named_on_every_process():
    gpu = Crossing("gpu0_allocated_peak", "max_gpu_memory", 9 * GIB, 8 * GIB)
    rows = [
        tuple(encode_row([], True)),
        tuple(encode_row([gpu], False)),
        tuple(encode_row([TREE], False)),
    ]
    assert decode_rows(rows) == Vote(gpu, 1, True)
    assert decode_rows([tuple(encode_row([], False))] * 3) == Vote(None, None, False)


def test_a_long_metric_name_is_cut_not_lost():
    long = Crossing("gpu12_allocated_peak_" + "x" * 40, "max_gpu_memory", 1, 0)
    got = decode_rows([tuple(encode_row([long], False))]).crossing
    assert got is not None and got.metric == long.metric[:32]


@pytest.mark.parametrize(
    ("found", "others", "expected"),
    [([TREE], False, Vote(TREE, 1, False)), ([], True, Vote(ANOTHER_WORKER, None, False))],
)
def test_a_flags_only_vote_says_another_worker(found, others, expected):
    class Flags(WorkerContext):  # TensorFlow's kind: an all-reduce of flags
        def any_workers(self, flags):
            return (flags[0] or others, flags[1])

    assert vote(Flags(num_workers=2, index=1), found, False) == expected


def test_the_halt_line_names_the_process():
    halt = Halt("process_tree", 5 * GIB, 4 * GIB, 1, 11, "stop", None, crossed_by="process 1")
    assert (
        halt.describe()
        == "process 1: process_tree 5.0 GiB crossed the bound 4.0 GiB at epoch 1, batch 11"
    )


def test_a_vote_that_cannot_run_warns_once_and_each_process_decides_alone(monkeypatch):
    pytest.importorskip("jax")
    from jax.experimental import multihost_utils

    from keras_memguard.backends.jax.distributed import JaxProcesses

    calls = []

    def no_collectives(value):  # what a jaxlib without CPU collectives raises
        calls.append(value)
        raise RuntimeError("UNIMPLEMENTED: cross-process collectives are not available")

    monkeypatch.setattr(multihost_utils, "process_allgather", no_collectives)
    reset_warnings()
    ctx = JaxProcesses(num_workers=2, index=1, is_chief=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert vote(ctx, [TREE], False) == Vote(TREE, 1, False)  # its own crossing
        assert vote(ctx, [], False) == Vote(None, None, False)
    assert len(calls) == 1  # no second collective once one failed
    messages = [str(w.message) for w in caught if issubclass(w.category, MemGuardWarning)]
    assert len(messages) == 1 and "cannot vote across JAX processes" in messages[0]
    assert ctx.run_name == "memory_p1" and ctx.worker_name(1) == "process 1"
