"""The examples run as a user runs them."""

import os
import subprocess
import sys

import pytest
from training import read_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args, timeout=600):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_quickstart_trains_logs_and_points_to_tensorboard(shapes_dir, tmp_path):
    log_dir = tmp_path / "logs"
    out = run_example(
        "quickstart.py", "--epochs", "2", "--data-dir", shapes_dir, "--log-dir", str(log_dir)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"tensorboard --logdir {log_dir}" in out.stdout
    assert "keras-memguard: 2 epoch(s)" in out.stdout + out.stderr
    accuracy = float(out.stdout.split("test accuracy ")[1].split()[0])
    # Four classes: chance is 0.25. Unseeded, one epoch gave 0.36 to 0.63 here, two
    # epochs 0.80.
    assert accuracy > 0.5
    assert {"train", "validation", "memory"} <= set(os.listdir(log_dir))
    assert "memory/process_tree_mib" in read_scalars(str(log_dir / "memory"))


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
def test_quickstart_rejects_bad_flags(flag):
    out = run_example("quickstart.py", flag, "many", timeout=60)
    assert out.returncode == 2 and "invalid int value" in out.stderr


def test_cifar10_offline_fails_fast_with_the_fix(tmp_path):
    import time

    env_key = "KERAS_MEMGUARD_OFFLINE"
    os.environ[env_key] = "1"
    try:
        start = time.monotonic()
        out = run_example("cifar10_resize.py", "--data-dir", str(tmp_path), timeout=120)
    finally:
        del os.environ[env_key]
    assert out.returncode == 2
    assert "'cifar10' is not prepared" in out.stderr and "memguard_shapes" in out.stderr
    assert time.monotonic() - start < 60  # the TensorFlow import, not download retries


def test_leak_example_halts_and_resumes(shapes_dir, tmp_path):
    out = run_example("leak_and_resume.py", "--work-dir", str(tmp_path), "--data-dir", shapes_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "halted: process_tree" in out.stdout
    assert "resumed at epoch 0" in out.stdout
    assert os.path.exists(tmp_path / "guard.keras")


def per_trial_mib(stdout, mode):
    line = next(line for line in stdout.splitlines() if line.startswith(f"{mode}: "))
    return float(line.split()[1])


def test_trial_loop_isolated_driver_grows_far_less_than_the_plain_loop(shapes_dir):
    out = run_example(
        "trial_loop.py", "--trials", "3", "--examples", "256", "--data-dir", shapes_dir
    )
    assert out.returncode == 0, out.stderr[-3000:]
    plain = per_trial_mib(out.stdout, "plain")
    isolated = per_trial_mib(out.stdout, "run_isolated")
    # Measured side by side in one run: the plain loop grows by megabytes per trial,
    # the driver that runs each trial in a child barely at all. A loose ratio; the
    # exact per-trial figures belong in benchmarks/bench_trials.py.
    assert plain > 1.0
    assert isolated < plain / 3
