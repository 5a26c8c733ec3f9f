"""One memory story across many fits: a run per fit or trial, one summary run."""

import os

import pytest
from test_snapshot_and_doctor import memguard_command
from training import read_scalars, tiny_data, tiny_model

from keras_memguard import MemGuardCallback
from keras_memguard.cli.report import load_report
from keras_memguard.guard import fits

pytestmark = pytest.mark.backends  # TensorFlow, JAX and PyTorch (issue #23)


def test_one_guard_over_three_fits_writes_three_runs_and_one_rising_summary(tmp_path):
    import subprocess

    x, y = tiny_data()
    guard = MemGuardCallback(log_dir=tmp_path, verbose=0)
    for _ in range(3):
        tiny_model().fit(x, y, epochs=2, verbose=0, callbacks=[guard])
    runs = sorted(d for d in os.listdir(tmp_path) if d.startswith("memory"))
    assert runs == ["memory", "memory_fit2", "memory_fit3", "memory_fits"]
    for run in runs[:3]:  # each fit's own epochs, not three fits on one step axis
        steps = [step for step, _ in read_scalars(str(tmp_path / run))["memory/process_tree_mib"]]
        assert steps == [0, 1]
    summary = read_scalars(str(tmp_path / "memory_fits"))
    for tag in ("fits/start_mib", "fits/end_mib", "fits/peak_mib"):
        assert [step for step, _ in summary[tag]] == [1, 2, 3]
    ends = dict(summary["fits/end_mib"])
    peaks = dict(summary["fits/peak_mib"])
    assert all(peaks[i] >= ends[i] > 0 for i in (1, 2, 3))

    (listing,) = [run for run in load_report(str(tmp_path)) if run.name == "memory_fits"]
    assert [(row["index"], row["run"]) for row in listing.fits()] == [
        (1, "memory"),
        (2, "memory_fit2"),
        (3, "memory_fit3"),
    ]
    out = subprocess.run(
        [*memguard_command(), "report", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "fits in memory_fits (3)" in out.stdout
    assert "memory_fit3" in out.stdout and "MiB/fit" in out.stdout
    assert "run memory (2 epochs)" in out.stdout  # the per-fit runs are still reported


def test_a_trial_names_its_run_and_its_step(tmp_path):
    x, y = tiny_data()
    fits.set_trial("07")
    try:
        tiny_model().fit(
            x, y, epochs=1, verbose=0, callbacks=[MemGuardCallback(tmp_path, verbose=0)]
        )
    finally:
        fits.set_trial(None)
    assert "memory/process_tree_mib" in read_scalars(str(tmp_path / "memory_trial_07"))
    steps = [step for step, _ in read_scalars(str(tmp_path / "memory_fits"))["fits/end_mib"]]
    assert steps == [7]
