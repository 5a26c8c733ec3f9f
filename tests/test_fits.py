"""One memory story across many fits: one run per guard and process, one summary run.

The layout (docs/isolation.md, "One memory story across many fits"): a guard's fits in
one process continue one ``memory`` run (step keeps counting, ``memory/fit_index`` says
which fit), each fit adds a point to ``memory_fits``; another process claims its own run
(``memory_run2``, ...), an isolated tuner trial writes ``memory_trial_<id>``.
"""

import copy
import os
import subprocess
import sys
import textwrap

import pytest
from test_snapshot_and_doctor import memguard_command
from training import read_scalars, tiny_data, tiny_model

from keras_memguard import MemGuardCallback
from keras_memguard.cli.report import load_report, read_run
from keras_memguard.guard import fits
from keras_memguard.guard.tensorboard import event_files

FITS = 20

pytestmark = pytest.mark.backends  # TensorFlow, JAX and PyTorch (issue #23)


def memory_runs(log_dir) -> list[str]:
    return sorted(d for d in os.listdir(log_dir) if d.startswith("memory"))


@pytest.mark.backends
def test_twenty_fits_with_one_guard_continue_one_run_and_one_summary(tmp_path):
    x, y = tiny_data(samples=64)
    model = tiny_model()
    guard = MemGuardCallback(log_dir=tmp_path, log_every_n_batches=1, verbose=0)
    for _ in range(FITS):
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[guard])
    assert memory_runs(tmp_path) == ["memory", "memory_fits"]
    # one event file each, however many fits: TensorBoard's run list is not the loop
    assert len(event_files(tmp_path / "memory")) == 1
    assert len(event_files(tmp_path / "memory_fits")) == 1

    scalars = read_scalars(str(tmp_path / "memory"))
    # the step keeps counting across fits: fit k's epochs are steps 2(k-1) and 2(k-1)+1
    steps = [step for step, _ in scalars["memory/process_tree_mib"]]
    assert steps == list(range(2 * FITS))
    # memory/fit_index: the fit's number under log_dir (1, 2, ...), at each epoch's step
    assert scalars["memory/fit_index"] == [(step, float(step // 2 + 1)) for step in steps]
    # memory_batch/: the training batches of all the fits, 4 a fit
    batches = [step for step, _ in scalars["memory_batch/process_tree_mib"]]
    assert batches == list(range(1, 4 * FITS + 1))

    summary = read_run(str(tmp_path / "memory_fits"))
    for tag in ("fits/start_mib", "fits/end_mib", "fits/peak_mib"):
        assert [step for step, _ in summary.scalars[tag]] == list(range(1, FITS + 1))
    assert summary.fit_runs == dict.fromkeys(range(1, FITS + 1), "memory")
    ends, peaks = dict(summary.scalars["fits/end_mib"]), dict(summary.scalars["fits/peak_mib"])
    assert all(peaks[i] >= ends[i] > 0 for i in range(1, FITS + 1))

    (listing,) = [run for run in load_report(str(tmp_path)) if run.name == "memory_fits"]
    assert [(row["index"], row["run"]) for row in listing.fits()] == [
        (i, "memory") for i in range(1, FITS + 1)
    ]
    out = subprocess.run(
        [*memguard_command(), "report", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert f"fits in memory_fits ({FITS})" in out.stdout and "MiB/fit" in out.stdout
    assert f"run memory ({2 * FITS} epochs in {FITS} fits)" in out.stdout


def test_steps_continue_a_loop_and_keep_a_resumed_fits_epochs():
    steps = fits.Steps()
    steps.begin_fit()  # fit(epochs=2), one batch an epoch
    assert [steps.epoch(0), steps.batch(1), steps.epoch(1), steps.batch(2)] == [0, 1, 1, 2]
    steps.begin_fit()  # the loop's next fit(epochs=2): after the steps so far
    assert [steps.batch(1), steps.epoch(0), steps.epoch(0), steps.epoch(1)] == [3, 2, 2, 3]
    steps.begin_fit()  # fit(initial_epoch=4, epochs=6) resumes: its own epoch numbers
    assert [steps.epoch(4), steps.epoch(5)] == [4, 5]
    steps.begin_fit()  # fit(initial_epoch=2, epochs=3) would go back: shifted after them
    assert steps.epoch(2) == 6


def test_each_copy_of_a_guard_keeps_its_own_run(tmp_path):
    # KerasTuner deep-copies the callbacks for each trial it runs in this process: each
    # copy is a guard of its own, in a run of its own, with the next fit numbers.
    x, y = tiny_data(samples=64)
    guard = MemGuardCallback(log_dir=tmp_path, verbose=0)
    first, second = copy.deepcopy([guard]) + copy.deepcopy([guard])  # as KerasTuner, per trial
    model = tiny_model()
    for trial in (first, second, first):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[trial])
    assert memory_runs(tmp_path) == ["memory", "memory_fits", "memory_run2"]
    assert read_scalars(str(tmp_path / "memory"))["memory/fit_index"] == [(0, 1.0), (1, 3.0)]
    assert read_scalars(str(tmp_path / "memory_run2"))["memory/fit_index"] == [(0, 2.0)]
    assert read_run(str(tmp_path / "memory_fits")).fit_runs == {
        1: "memory",
        2: "memory_run2",
        3: "memory",
    }
    # a copy of a run's writer taken after its fits (a deep copy, a pickle for a child
    # process) continues nothing: it claims a run of its own
    twin = copy.deepcopy(first._run)
    twin.open(str(tmp_path), "memory", gpu_indices=[])
    assert os.path.basename(twin.writer.run_dir) == "memory_run3"
    twin.close()


_FIT_TWICE = textwrap.dedent(
    """
    import sys
    from training import tiny_data, tiny_model
    from keras_memguard import MemGuardCallback

    x, y = tiny_data(samples=64)
    model = tiny_model()
    guard = MemGuardCallback(log_dir=sys.argv[1], verbose=0)
    for _ in range(2):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[guard])
    """
)


def fit_twice(log_dir) -> None:
    x, y = tiny_data(samples=64)
    model = tiny_model()
    guard = MemGuardCallback(log_dir=log_dir, verbose=0)
    for _ in range(2):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[guard])


@pytest.mark.tensorflow  # claiming runs across processes is the same on every backend
def test_two_processes_with_a_guard_each_keep_two_runs_and_share_the_summary(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([tests, os.path.dirname(tests), env.get("PYTHONPATH", "")])
    # This process and a child fit at the same time: the runs are claimed with
    # os.mkdir, the fit numbers under a lock.
    child = subprocess.Popen(
        [sys.executable, "-c", _FIT_TWICE, str(tmp_path)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        fit_twice(tmp_path)
    finally:
        _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    assert memory_runs(tmp_path) == ["memory", "memory_fits", "memory_run2"]
    numbers = {}
    for run in ("memory", "memory_run2"):
        assert len(event_files(tmp_path / run)) == 1
        points = read_scalars(str(tmp_path / run))["memory/fit_index"]
        assert [step for step, _ in points] == [0, 1]  # each run its own step axis
        numbers[run] = [int(index) for _, index in points]
    assert sorted(numbers["memory"] + numbers["memory_run2"]) == [1, 2, 3, 4]
    summary = read_run(str(tmp_path / "memory_fits"))
    assert [step for step, _ in summary.scalars["fits/end_mib"]] == [1, 2, 3, 4]
    assert summary.fit_runs == {i: run for run, indices in numbers.items() for i in indices}
    # one summary event file per process, however many fits each ran
    assert len(event_files(tmp_path / "memory_fits")) == 2


def test_a_trial_names_its_run_and_its_step(tmp_path):
    x, y = tiny_data()
    fits.set_trial("07")
    try:
        tiny_model().fit(
            x, y, epochs=1, verbose=0, callbacks=[MemGuardCallback(tmp_path, verbose=0)]
        )
    finally:
        fits.set_trial(None)
    assert memory_runs(tmp_path) == ["memory_fits", "memory_trial_07"]
    assert read_scalars(str(tmp_path / "memory_trial_07"))["memory/fit_index"] == [(0, 7.0)]
    steps = [step for step, _ in read_scalars(str(tmp_path / "memory_fits"))["fits/end_mib"]]
    assert steps == [7]
