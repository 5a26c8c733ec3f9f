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
        "quickstart.py", "--epochs", "1", "--data-dir", shapes_dir, "--log-dir", str(log_dir)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"tensorboard --logdir {log_dir}" in out.stdout
    assert "keras-memguard: 1 epoch(s)" in out.stdout + out.stderr
    accuracy = float(out.stdout.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.4  # four classes: chance is 0.25
    assert {"train", "validation", "memory"} <= set(os.listdir(log_dir))
    assert "memory/process_tree_rss_mib" in read_scalars(str(log_dir / "memory"))


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
def test_quickstart_rejects_bad_flags(flag):
    out = run_example("quickstart.py", flag, "many", timeout=60)
    assert out.returncode == 2 and "invalid int value" in out.stderr
