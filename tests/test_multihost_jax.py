"""Multi-host JAX (issue #30): two real ``jax.distributed`` processes on 127.0.0.1.

``examples/multihost_jax.py`` starts both (CPU collectives over gloo), each fitting under
``keras.distribution.DataParallel`` across the two: a healthy fit, then one where process 1
leaks; then a fit under ``ModelParallel`` with the kernels split across the processes.
The guard votes at the same steps on both, so both stop together, process 0 keeps the
checkpoint, and neither hangs (the launcher and this test bound the wait).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_memguard.cli.report import load_report

pytestmark = [
    pytest.mark.backends,
    pytest.mark.skipif(
        keras.backend.backend() != "jax",
        reason="jax.distributed processes: runs in the JAX environment (KERAS_BACKEND=jax)",
    ),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, BATCHES_PER_EPOCH = 2, 20  # the example's 320 samples in batches of 16
CANNOT_VOTE = "cannot vote across JAX processes"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Runs the example once (``DataParallel``: fit 0 healthy, fit 1 with process 1 leaking
    12 MiB a batch; fit 2 under ``ModelParallel``, kernels split across the processes)."""
    workdir = tmp_path_factory.mktemp("multihost")
    launcher = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "multihost_jax.py"),
            *("--work-dir", str(workdir), "--leak-mib", "0,12"),
            *("--epochs", str(EPOCHS), "--sharded", "12", "--timeout", "240"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
    )
    try:
        output, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:  # a hang is a failure, never a stuck CI
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=30)
    if CANNOT_VOTE in output:
        line = next(x for x in output.splitlines() if CANNOT_VOTE in x)
        pytest.skip(f"the processes could not vote in this jaxlib: {line.strip()[:300]}")
    assert launcher.returncode == 0, output[-4000:]
    assert "process exit codes: [0, 0]" in output
    results = []
    for index in (0, 1):
        with open(workdir / f"result{index}.json") as f:
            results.append(json.load(f)["fits"])
    return workdir, results, output


def test_every_process_stops_at_the_same_step_naming_who_crossed(two_processes):
    _, (first, second), output = two_processes
    halts = [first[1]["halt"], second[1]["halt"]]
    for halt in halts:
        assert halt["metric"] == "process_tree"  # process 1's own figure, on both
        assert halt["crossed_by"] == "process 1"
    assert (halts[0]["epoch"], halts[0]["batch"]) == (halts[1]["epoch"], halts[1]["batch"])
    assert first[1]["batches"] == second[1]["batches"] < EPOCHS * BATCHES_PER_EPOCH
    # the halt line on every process says which process crossed which bound
    for index in (0, 1):
        assert f"process {index}, fit 1: process 1: process_tree" in output


def test_process_0_keeps_the_checkpoint_and_it_loads(two_processes):
    workdir, (first, second), _ = two_processes
    path = first[1]["halt"]["checkpoint"]
    assert path == str(workdir / "guard1.keras")
    assert second[1]["halt"]["checkpoint"] is None
    assert sorted(p for p in os.listdir(workdir) if p.startswith("guard")) == ["guard1.keras"]
    model = keras.saving.load_model(path)
    # Saved at the halt, before the batch Keras still runs after a stop at a batch's
    # begin: the model as it was then, one step before the model fit returned.
    assert int(model.optimizer.iterations.numpy()) == first[1]["iterations"] - 1
    saved = model.get_weights()
    at_halt = first[1]["weights_at_halt"]
    assert len(saved) == len(at_halt) == 4
    for got, want in zip(saved, at_halt, strict=True):
        np.testing.assert_array_equal(got, np.asarray(want, dtype=got.dtype))


def test_a_healthy_run_does_not_halt_nor_vote_at_every_batch(two_processes):
    _, (first, second), _ = two_processes
    assert first[0]["halt"] is None and second[0]["halt"] is None
    batches = EPOCHS * BATCHES_PER_EPOCH
    assert first[0]["batches"] == second[0]["batches"] == batches
    # the same votes on both (a collective each), on batch counts: 3 warm-up checks,
    # then every 10 batches, and each epoch's end; not one per batch
    assert first[0]["votes"] == second[0]["votes"]
    assert 0 < first[0]["votes"] <= batches // 10 + 3 + 2 * EPOCHS


def test_one_memory_run_per_process_read_together(two_processes):
    workdir, _, _ = two_processes
    runs = {run.name: run for run in load_report(str(workdir / "logs"))}
    for index in (0, 1):  # a new guard per fit: a run per guard, per process
        mine = sorted(name for name in runs if name.startswith(f"memory_p{index}"))
        assert mine == [f"memory_p{index}", f"memory_p{index}_run2", f"memory_p{index}_run3"]
        assert "memory/process_tree_mib" in runs[f"memory_p{index}"].scalars
        halts = runs[f"memory_p{index}_run2"].halts
        assert len(halts) == 1 and "process 1: process_tree" in halts[0]
    # process 0's fits are the run's fits: one point each in the summary run
    assert len(runs["memory_fits"].fits()) == 3


def test_model_parallel_across_processes_stops_together_and_says_why_nothing_is_saved(
    two_processes,
):
    workdir, (first, second), output = two_processes
    halts = [first[2]["halt"], second[2]["halt"]]
    assert halts[0] == halts[1]  # the same step, the same crossing, no checkpoint
    assert halts[0]["crossed_by"] == "process 1" and halts[0]["checkpoint"] is None
    assert first[2]["batches"] == second[2]["batches"] < EPOCHS * BATCHES_PER_EPOCH
    assert not (workdir / "guard2.keras").exists()
    # each process prints the line (and warns it): the two processes share one stream,
    # so a line can start after the other's unfinished output
    said = [
        line
        for line in output.splitlines()
        if "keras-memguard: COULD NOT SAVE" in line and "MemGuardWarning" not in line
    ]
    assert len(said) == 2 and all("sharded across processes" in line for line in said), said
