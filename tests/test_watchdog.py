"""The watchdog (issue #24) without filling memory: its decision over readings, the
thread against scripted readings, a real fit that never wakes it, the heartbeat, the
post-mortem, and run_isolated / find_batch_size treating its exit code as out of memory.

The runs that really fill memory, in a memory cgroup, are in test_watchdog_cgroup.py.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time

import isolated_tasks as tasks
import keras
import pytest
from training import tiny_data, tiny_model

from keras_memguard import ChildKilledError, MemGuardCallback, find_batch_size, run_isolated
from keras_memguard.cli.report import post_mortem, read_run
from keras_memguard.errors import WATCHDOG_EXIT_CODE, MemGuardWarning
from keras_memguard.guard import watchdog as watchdog_module
from keras_memguard.guard.heartbeat import HEARTBEAT_FILE, Heartbeat, read_heartbeat
from keras_memguard.guard.policy import Bounds
from keras_memguard.guard.tensorboard import EventWriter
from keras_memguard.guard.watchdog import Reading, Watchdog, decide, waiting_for
from keras_memguard.isolation.batch_size import is_out_of_memory
from keras_memguard.memory_snapshot import MemorySnapshot
from keras_memguard.sizes import parse_size

pytestmark = pytest.mark.backends
MIB = 2**20
GIB = 2**30
FLOOR = 61 * MIB  # 2% of 3 GiB


def readings(available_mib, tree_mib, step_s=0.1, limit=3 * GIB):
    return [
        Reading(i * step_s, int(a * MIB), limit, None if t is None else int(t * MIB))
        for i, (a, t) in enumerate(zip(available_mib, tree_mib, strict=True))
    ]


# ------------------------------------------------------------------ the decision
def test_fast_growth_far_from_the_floor_warns_and_near_it_ends():
    # 400 MiB/s: 40 MiB per 0.1 s reading, this process tree growing by as much.
    far = readings([1000, 960, 920, 880, 840, 800], [2000, 2040, 2080, 2120, 2160, 2200])
    decision = decide(far, FLOOR)
    assert decision.action == "warn"
    assert decision.rate == pytest.approx(400 * MIB, rel=0.01)
    assert decision.seconds_left == pytest.approx((800 - 61) / 400, rel=0.01)
    near = readings([400, 360, 320, 280, 240, 200], [2600, 2640, 2680, 2720, 2760, 2800])
    assert decide(near, FLOOR).action == "exit"  # 139 MiB above the floor: 0.35 s


def test_growth_far_beyond_the_warning_horizon_says_nothing():
    slow = readings([3000, 2990, 2980], [100, 110, 120], step_s=0.5)  # 20 MiB/s, 150 s away
    assert decide(slow, FLOOR).action == "none"


def test_below_the_floor_but_stable_never_ends():
    # A guard saving its checkpoint at the floor, say: nothing grows, nothing ends.
    stable = readings([40, 40, 39, 40, 40], [2900, 2900, 2901, 2900, 2900])
    assert decide(stable, FLOOR).action == "none"


def test_growth_elsewhere_on_the_machine_never_ends_this_process():
    # Available memory falls fast, but this process tree does not grow.
    others = readings([400, 300, 200, 100, 50], [500, 500, 501, 500, 500])
    assert decide(others, FLOOR).action == "none"


def test_slow_steady_growth_is_seen_over_the_whole_episode():
    # 1 MiB per 0.1 s reading: under the noise in the 0.5 s window, not over the episode.
    steady = readings([300 - i for i in range(60)], [2000 + i for i in range(60)])
    decision = decide(steady, FLOOR)
    assert decision.rate == pytest.approx(10 * MIB, rel=0.01)
    assert decision.action == "warn"
    assert decision.seconds_left == pytest.approx((241 - 61) / 10, rel=0.01)


def test_a_process_over_its_bound_while_stuck_is_reported():
    stable = readings([1500, 1500, 1500], [2600, 2600, 2600])
    assert decide(stable, FLOOR, process_bound=2400 * MIB).action == "warn"
    assert decide(stable, FLOOR, process_bound=2700 * MIB).action == "none"


def test_one_reading_decides_nothing():
    assert decide(readings([10], [3000]), FLOOR).action == "none"


def test_where_the_training_thread_waits():
    keras_dir = os.path.dirname(keras.__file__)
    adapter = os.path.join(keras_dir, "src/trainers/data_adapters/py_dataset_adapter.py")
    assert waiting_for(["/x/train.py", os.path.join(keras_dir, "src/trainer.py"), adapter]) == (
        "input"
    )
    guard = os.path.join(os.path.dirname(watchdog_module.__file__), "callback.py")
    assert waiting_for(["/x/train.py", guard, "/x/h5py/_hl/files.py"]) == "guard"
    assert waiting_for(["/x/train.py", "/x/tensorflow/python/eager/execute.py"]) == "unknown"
    # run_isolated's child runs every isolated fit: not the guard being busy
    child = os.path.join(os.path.dirname(guard), "..", "isolation", "_child.py")
    assert waiting_for([os.path.normpath(child), "/x/tensorflow/python/eager/execute.py"]) == (
        "unknown"
    )


# ------------------------------------------------------------ the thread itself
def fake_snapshot(available_mib, tree_mib, limit=3 * GIB):
    return MemorySnapshot(
        timestamp=time.time(),
        process_rss=int(tree_mib * MIB),
        process_tree=int(tree_mib * MIB),
        system_total=16 * GIB,
        system_available=12 * GIB,
        container_limit=limit,
        container_usage=limit - int(available_mib * MIB),
        container_working_set=limit - int(available_mib * MIB),
    )


@pytest.fixture
def growing_memory(monkeypatch):
    """Memory falls at 400 MiB/s from the moment the test starts, in this tree."""
    state = {"available": 1200.0, "tree": 1800.0, "start": time.monotonic()}

    def read(gpus=True):
        grown = 400 * (time.monotonic() - state["start"])
        state["available"] = max(0.0, 1200 - grown)
        state["tree"] = 1800 + grown
        return fake_snapshot(state["available"], state["tree"])

    monkeypatch.setattr(watchdog_module, "snapshot", read)
    monkeypatch.setattr(watchdog_module, "STUCK_MIN_S", 0.3)
    return state


def run_stuck_watchdog(tmp_path, on_stuck, multi_worker=False, seconds=8.0):
    exits = []
    ended = threading.Event()
    writer = EventWriter(tmp_path / "memory")
    beat = Heartbeat(str(tmp_path / "memory"), {"pid": os.getpid()})

    def fake_exit(code):
        exits.append(code)
        ended.set()

    dog = Watchdog(
        Bounds(emergency_available_memory=parse_size("2%", name="x")),
        on_stuck,
        multi_worker=multi_worker,
        writer=writer,
        heartbeat=beat,
        where=lambda: ("train", 0, 0),
        exit=fake_exit,
    )
    dog.start(fake_snapshot(1200, 1800))  # the training thread (this one) never checks again
    ended.wait(seconds)
    dog.stop("ended" if not exits else "watchdog")
    writer.close()
    return exits, dog


def test_stuck_and_growing_ends_the_process_with_its_code_and_flushed_figures(
    tmp_path, growing_memory, capfd
):
    exits, _ = run_stuck_watchdog(tmp_path, "exit")
    assert exits == [WATCHDOG_EXIT_CODE]
    err = capfd.readouterr().err
    assert "keras-memguard: memory is growing while" in err  # the warning, once
    assert f"ending the process (exit code {WATCHDOG_EXIT_CODE})" in err
    assert "(container limit)" in err
    rates = [int(r.replace(",", "")) for r in re.findall(r"\+([\d,]+) MiB/s", err)]
    assert rates and all(360 <= rate <= 440 for rate in rates), err
    run = read_run(str(tmp_path / "memory"))
    assert any("ending the process" in line for line in run.watchdog)
    assert 360 <= run.scalars["memory_watchdog/growth_mib_per_s"][-1][1] <= 440
    assert "memory_watchdog/effective_available_mib" in run.scalars
    # ended before the floor (61 MiB): the last reading still had room for one more step
    assert growing_memory["available"] > 61


@pytest.mark.parametrize(
    "on_stuck, multi_worker, why",
    [("warn", False, "on_stuck='warn'"), ("exit", True, "several workers")],
)
def test_warn_only_never_ends(tmp_path, growing_memory, capfd, on_stuck, multi_worker, why):
    exits, dog = run_stuck_watchdog(tmp_path, on_stuck, multi_worker, seconds=5.0)
    assert exits == []
    assert growing_memory["available"] == 0  # it watched all the way down
    err = capfd.readouterr().err
    # one line when it sees the growth, one when it would end the process: no more
    assert err.count("keras-memguard: memory is growing") == 2, err
    assert "ending the process" not in err
    assert err.count(f"it goes on ({why}") == 1, err  # said once, at the point of ending
    assert read_heartbeat(str(tmp_path / "memory"))["state"] == "ended"
    if why == "several workers":  # the guard passes several workers as warn-only
        assert dog.on_stuck == "warn"


# ------------------------------------------------------------- in a real fit
def test_a_healthy_fit_never_reads_memory_in_the_watchdog(tmp_path, monkeypatch):
    reads = []
    original = watchdog_module.snapshot
    monkeypatch.setattr(watchdog_module, "snapshot", lambda **k: reads.append(1) or original(**k))
    x, y = tiny_data(samples=256)
    model = tiny_model()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # traced and compiled here
    guard = MemGuardCallback(log_dir=tmp_path)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[guard])
    # (while a first step compiles, a second or more, the watchdog does read memory)
    assert reads == []
    assert not [t for t in threading.enumerate() if t.name == "memguard-watchdog"]
    beat = read_heartbeat(str(tmp_path / "memory"))
    assert beat["state"] == "ended" and beat["epoch"] == 2 and beat["batches"] == 48
    assert beat["pid"] == os.getpid() and beat["limit"]["bytes"] > 0
    assert beat["figures"]["process_tree_mib"] > 0


class _Boom(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("boom")


def test_a_fit_that_raised_stops_its_watchdog(tmp_path, monkeypatch):
    monkeypatch.setattr(watchdog_module, "STUCK_MIN_S", 0.2)
    x, y = tiny_data(samples=64)
    guard = MemGuardCallback(log_dir=tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        tiny_model().fit(x, y, epochs=2, verbose=0, callbacks=[guard, _Boom()])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        t.name == "memguard-watchdog" for t in threading.enumerate()
    ):
        time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name == "memguard-watchdog"]
    assert read_heartbeat(str(tmp_path / "memory"))["state"] == "raised"
    # the same guard fits again: a fresh watchdog, its heartbeat in the run it continues
    tiny_model().fit(x, y, epochs=1, verbose=0, callbacks=[guard])
    assert read_heartbeat(str(tmp_path / "memory"))["state"] == "ended"


def test_on_stuck_is_validated():
    with pytest.raises(ValueError, match=r"on_stuck.*Received: on_stuck='kill'.*'exit' or 'warn'"):
        MemGuardCallback(on_stuck="kill")


def test_without_a_log_dir_there_is_no_heartbeat(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = tiny_data(samples=32)
    tiny_model().fit(x, y, epochs=1, verbose=0, callbacks=[MemGuardCallback()])
    assert not list(tmp_path.rglob(HEARTBEAT_FILE))


# ------------------------------------------------------------- the heartbeat
def test_heartbeat_writes_at_most_once_a_second_and_atomically(tmp_path):
    beat = Heartbeat(str(tmp_path), {"pid": 1})
    assert beat.write({"epoch": 0}, force=True)
    assert not beat.write({"epoch": 1})  # too soon: kept for the next write
    assert read_heartbeat(str(tmp_path))["epoch"] == 0
    beat.close("ended")
    data = json.loads((tmp_path / HEARTBEAT_FILE).read_text())
    assert data["epoch"] == 1 and data["state"] == "ended" and data["pid"] == 1
    assert os.listdir(tmp_path) == [HEARTBEAT_FILE]  # no temporary file left


# ------------------------------------------------------------- the post-mortem
def beat(state="running", available=2.0, kills_at_start=0, **extra):
    return {
        "state": state,
        "pid": 999999,
        "host": "elsewhere",
        "epoch": 0,
        "batches": 0,
        "phase": "train",
        "limit": {"bytes": 3 * GIB, "source": "container limit"},
        "figures": {"effective_limit_mib": 3072.0, "effective_available_mib": available},
        "cgroup": {"path": "/nowhere", "version": 2, "oom_kills_at_start": kills_at_start},
        **extra,
    }


def test_post_mortem_of_an_oom_kill():
    text = post_mortem(beat(), oom_kills_now=1)
    assert text == (
        "the run ended without reaching train end, at 3.0 GiB of 3.0 GiB (container limit) in "
        "epoch 0 before its first batch: most likely killed by the OOM killer (the cgroup's "
        "OOM-kill count rose from 0 to 1)"
    )


def test_post_mortem_of_a_kill_from_outside_says_cause_unknown():
    text = post_mortem(beat(available=2000.0, batches=7), oom_kills_now=0)
    assert "ended without reaching train end" in text and "cause unknown" in text
    assert "7 training batch(es) into the fit" in text
    assert "did not rise (0)" in text
    # nearly out of memory, the count unreadable: possible, not certain
    assert "possibly killed by the OOM killer" in post_mortem(beat(), oom_kills_now=None)


def test_post_mortem_of_the_other_endings():
    assert "watchdog ended the process (exit code 86)" in post_mortem(beat("watchdog"))
    assert post_mortem(beat("ended")) == "the run reached train end"
    assert "fit raised" in post_mortem(beat("exited"))
    assert "still running" in post_mortem(beat(), alive=True)


# ------------------------------------------------------------- isolation
def test_run_isolated_reports_the_watchdog_exit_as_out_of_memory():
    with pytest.raises(ChildKilledError, match="watchdog") as info:
        run_isolated(tasks.exit_with, WATCHDOG_EXIT_CODE)
    assert info.value.exit.ended_by_watchdog
    assert is_out_of_memory(info.value)
    with pytest.raises(ChildKilledError) as info:  # another exit code: not memory
        run_isolated(tasks.exit_with, 3)
    assert not info.value.exit.ended_by_watchdog and not is_out_of_memory(info.value)


def test_find_batch_size_tries_a_smaller_batch_after_a_watchdog_exit():
    train = functools.partial(tasks.watchdog_exit_above, limit=16)
    found = find_batch_size(train, 64, min_batch_size=4)
    assert found.batch_size == 16 and found.result == 16
    assert [(a.batch_size, a.outcome) for a in found.attempts] == [
        (64, "out of memory"),
        (32, "out of memory"),
        (16, "ok"),
    ]
    assert "watchdog" in found.attempts[0].detail


def test_exit_code_is_documented():
    docs = os.path.join(os.path.dirname(__file__), "..", "docs", "callback.md")
    with open(docs) as f:
        assert f"exit code {WATCHDOG_EXIT_CODE}" in f.read()


def test_heartbeat_of_a_removed_log_dir_stops_quietly(tmp_path, recwarn):
    run = tmp_path / "logs" / "memory"
    run.mkdir(parents=True)
    beat = Heartbeat(str(run), {"pid": 1})
    assert beat.write({"epoch": 0}, force=True)
    os.remove(run / HEARTBEAT_FILE)
    run.rmdir()
    assert not beat.write({"epoch": 1}, force=True)
    assert not run.exists()  # not recreated behind the user's back
    assert not [w for w in recwarn if "heartbeat" in str(w.message)]


def test_heartbeat_that_cannot_be_written_warns_once(tmp_path):
    beat = Heartbeat(str(tmp_path), {"pid": 1})
    (tmp_path / HEARTBEAT_FILE).mkdir()  # os.replace onto a directory fails
    with pytest.warns(MemGuardWarning, match="cannot write its heartbeat file") as record:
        assert not beat.write({"epoch": 0}, force=True)
        assert not beat.write({"epoch": 1}, force=True)
    assert len(record) == 1
    assert os.listdir(tmp_path) == [HEARTBEAT_FILE]  # no temporary file left behind


def test_a_late_watchdog_of_an_earlier_fit_leaves_the_running_fit_alone(tmp_path):
    # Issue #23: a fit's watchdog ends what a fit that raised left open; one that wakes
    # late, after the guard started another fit, must not close that fit's files.
    guard = MemGuardCallback(log_dir=tmp_path)
    seen = []

    class LateWatchdog(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                guard._end_stale_fit(Watchdog(guard.bounds, "warn"))  # not this fit's
                seen.append((guard._writer is not None, guard._watchdog is not None))

    x, y = tiny_data(samples=64)
    tiny_model().fit(x, y, epochs=1, verbose=0, callbacks=[guard, LateWatchdog()])
    assert seen == [(True, True)]
    assert read_heartbeat(str(tmp_path / "memory"))["state"] == "ended"
