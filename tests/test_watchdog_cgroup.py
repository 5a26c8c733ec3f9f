"""The watchdog and the post-mortem in a real memory cgroup (issue #24).

Each run is a fresh Python (tests/stuck_training.py) placed in a memory cgroup nested
under this test's own (tests/memory_cgroup.py), with a hard limit of 1 to 1.5 GiB; the
cgroup's own OOM-kill counter says whether the kernel killed anything. Skipped, with
the reason, where no such cgroup can be created.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import keras
import pytest
from memory_cgroup import GIB, memory_cgroup
from training import TESTS

from keras_memguard.cli.report import read_run
from keras_memguard.errors import WATCHDOG_EXIT_CODE
from keras_memguard.guard.heartbeat import read_heartbeat
from keras_memguard.guard.tensorboard import event_files

pytestmark = pytest.mark.backends
# TensorFlow alone holds ~700 MiB here; JAX and PyTorch less.
LIMIT = int(1.5 * GIB)


def env() -> dict[str, str]:
    path = os.pathsep.join([TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def run_stuck(group, mode, workdir, on_stuck="exit", timeout=240):
    """Runs stuck_training.py in ``group``; returns (exit code, stderr)."""
    proc = group.popen(
        [sys.executable, os.path.join(TESTS, "stuck_training.py"), mode, str(workdir), on_stuck],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    out, err = proc.communicate(timeout=timeout)
    assert "TRAINING DONE" not in out  # memory ran out before training could end
    return proc.returncode, err


def report(log_dir) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "keras_memguard", "report", str(log_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_ended_by_the_watchdog(group, workdir, code, err, kills_before):
    assert code == WATCHDOG_EXIT_CODE, err[-3000:]
    assert group.oom_kills() == kills_before  # the kernel's OOM killer never acted
    assert f"ending the process (exit code {WATCHDOG_EXIT_CODE})" in err
    assert "memory is growing while" in err and "(container limit)" in err
    run_dir = os.path.join(workdir, "logs", "memory")
    run = read_run(run_dir)  # flushed before the exit: readable
    assert any("ending the process" in line for line in run.watchdog)
    assert run.scalars["memory_watchdog/growth_mib_per_s"][-1][1] > 0
    assert os.path.getsize(event_files(run_dir)[0]) > 1000  # far more than its 40-byte header
    beat = read_heartbeat(run_dir)
    assert beat["state"] == "watchdog" and beat["epoch"] == 0
    assert beat["cgroup"]["path"] == group.path and beat["limit"]["bytes"] == group.limit
    text = report(os.path.join(workdir, "logs"))
    assert f"the guard's watchdog ended the process (exit code {WATCHDOG_EXIT_CODE})" in text
    assert "of 1.5 GiB (container limit) in epoch 0" in text
    return beat


@pytest.mark.tensorflow
def test_a_shuffle_buffer_filling_before_the_first_batch_ends_by_the_watchdog(tmp_path):
    """The seed's failure: tf.data's shuffle buffer of 224x224 images fills memory."""
    with memory_cgroup(LIMIT) as group:
        before = group.oom_kills()
        code, err = run_stuck(group, "shuffle", tmp_path)
        beat = assert_ended_by_the_watchdog(group, tmp_path, code, err, before)
    assert beat["batches"] <= 1  # the first batch never arrived


def test_a_generator_filling_memory_before_it_yields_ends_by_the_watchdog(tmp_path):
    """A PyDataset building a huge buffer in one batch: on every backend."""
    with memory_cgroup(LIMIT) as group:
        before = group.oom_kills()
        code, err = run_stuck(group, "generator", tmp_path)
        assert_ended_by_the_watchdog(group, tmp_path, code, err, before)
    # JAX and PyTorch read a PyDataset on the training thread, so its stack shows the
    # wait; TensorFlow reads it inside its own ops, where no Python frame shows it.
    waits = {
        "tensorflow": "while the training thread waits (for its input, or inside one step)",
        "jax": "while training waits for its input",
        "torch": "while training waits for its input",
    }
    assert waits[keras.backend.backend()] in err


def test_with_on_stuck_warn_the_oom_killer_acts_and_report_says_so(tmp_path):
    with memory_cgroup(LIMIT) as group:
        before = group.oom_kills()
        code, err = run_stuck(group, "generator", tmp_path, on_stuck="warn")
        assert code == -signal.SIGKILL, err[-3000:]
        assert group.oom_kills() == before + 1
        assert "it goes on (on_stuck='warn')" in err
        text = report(tmp_path / "logs")  # while the cgroup (and its count) still exists
    assert "the run ended without reaching train end, at " in text
    assert (
        "most likely killed by the OOM killer (the cgroup's OOM-kill count rose from "
        f"{before} to {before + 1})"
    ) in text


def test_a_run_killed_from_outside_gets_cause_unknown(tmp_path):
    with memory_cgroup(LIMIT) as group:
        proc = group.popen(
            [sys.executable, os.path.join(TESTS, "stuck_training.py"), "slow", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env(),
        )
        run_dir = tmp_path / "logs" / "memory"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            beat = read_heartbeat(str(run_dir))
            if beat and (beat.get("batches") or 0) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGKILL)  # a scheduler, say: no memory pressure at all
        proc.wait(30)
        proc.stderr.close()
        text = report(tmp_path / "logs")
        kills = group.oom_kills()
    assert "the run ended without reaching train end" in text
    assert "in epoch 0, " in text and "training batch(es) into the fit" in text
    assert "cause unknown (killed from outside: SIGKILL, a job scheduler, a crash)" in text
    assert f"the cgroup's OOM-kill count did not rise ({kills})" in text


FIND = """
import json, sys
import isolated_tasks
from keras_memguard import find_batch_size
found = find_batch_size(isolated_tasks.fill_input_with_batch, 64, min_batch_size=4, timeout=240)
json.dump([[a.batch_size, a.outcome, a.detail] for a in found.attempts], open(sys.argv[1], "w"))
"""


def test_find_batch_size_tries_a_smaller_batch_after_the_watchdog_ends_one(tmp_path):
    """A batch whose input fills memory ends by the watchdog; a smaller one fits."""
    result = tmp_path / "attempts.json"
    with memory_cgroup(LIMIT) as group:
        before = group.oom_kills()
        proc = group.popen(
            [sys.executable, "-c", FIND, str(result)], stderr=subprocess.PIPE, text=True, env=env()
        )
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert group.oom_kills() == before  # every failed attempt ended by the watchdog
    attempts = json.loads(result.read_text())
    assert attempts[0][:2] == [64, "out of memory"]
    assert f"watchdog (exit code {WATCHDOG_EXIT_CODE})" in attempts[0][2]
    assert attempts[-1][1] == "ok" and attempts[-1][0] < 64
    assert all(f"exit code {WATCHDOG_EXIT_CODE}" in a[2] for a in attempts if a[1] != "ok")
