"""Safe with no arguments (issue #23): real runs in a real memory cgroup that grow fast.

Each run is a child process in a memory cgroup nested under this process's own, with a
hard limit (``memory_cgroup.MemoryCgroup``); the test skips, with the reason, where
none can be made. The issue's table (3 GiB container, a ~700 MiB process, 100 and
1,000 MiB per batch) is scaled to a 1.25 GiB container by the room the process leaves:
each batch holds 4.2% and 42% of the room left at train begin.
"""

import json
import os
import sys

import keras
import pytest
from memory_cgroup import MemoryCgroup

MIB = 2**20
LIMIT = 1280 * MIB
CACHE_FRACTION = 0.05
TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def box():
    box = MemoryCgroup.create(LIMIT)
    if box is None:
        pytest.skip(f"no memory cgroup for a contained run: {MemoryCgroup.why_not}")
    with box:
        yield box


def run(box, tmp_path, kind, fraction, **guard):
    path = os.pathsep.join([TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")])
    script = os.path.join(TESTS, "safety_training.py")
    argv = [sys.executable, script, kind, str(fraction), json.dumps(guard), str(tmp_path)]
    proc = box.run(argv, timeout=300, env={**os.environ, "PYTHONPATH": path})
    killed = box.oom_kills()
    assert proc.returncode == 0 and killed == 0, (
        f"rc={proc.returncode}, OOM kills={killed}: {proc.stderr[-3000:]}"
    )
    with open(tmp_path / "result.json") as f:
        return json.load(f), proc.stderr


@pytest.mark.parametrize("fraction", [0.042, 0.42], ids=["100MiB-per-batch", "1000MiB-per-batch"])
def test_no_argument_guard_stops_a_fast_leak_before_the_oom_killer(box, tmp_path, fraction):
    result, stderr = run(box, tmp_path, "leak", fraction)
    halt = result["halt"]
    assert halt is not None, stderr[-3000:]
    assert halt["metric"] == "effective_available"
    assert result["epochs_run"] < 3  # fit returned early, normally
    model = keras.models.load_model(halt["checkpoint"])
    assert model.count_params() > 0
    assert not [f for f in os.listdir(tmp_path / "ckpt") if ".tmp." in f]


def test_a_cache_that_fills_fast_and_levels_off_is_not_halted(box, tmp_path):
    # Each batch holds 5% of the room until the working set reaches 85% of the limit:
    # the cache fills during epoch 1 (16 of its 20 batches), then levels off.
    result, _ = run(box, tmp_path, "cache", CACHE_FRACTION)
    assert result["halt"] is None, result["describe"]
    assert result["epochs_run"] == 3
    assert result["held"] >= 4  # it did fill fast: several batches of growth
