"""run_isolated and find_batch_size with real child processes."""

import functools
import importlib.util
import os
import signal
import sys
import time

import isolated_tasks as tasks
import psutil
import pytest

from keras_memguard.backends.base import backend_name
from keras_memguard.isolation.batch_size import BatchSizeSearchError, find_batch_size
from keras_memguard.isolation.run import (
    ChildFailedError,
    ChildKilledError,
    ChildMemoryLimitError,
    ChildSystemExit,
    ChildTimeoutError,
    RemoteTraceback,
    run_isolated,
)

MIB = 2**20


def test_result_crosses_the_process_boundary():
    assert run_isolated(tasks.add, 2, b=40) == 42
    assert run_isolated(tasks.add, [1], [2]) == [1, 2]


def test_exception_is_re_raised_with_the_child_traceback():
    with pytest.raises(ValueError, match="boom") as info:
        run_isolated(tasks.fail, "boom")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "isolated_tasks.py" in cause.text and "in fail" in cause.text


def test_unpicklable_exception_becomes_child_failed_error():
    with pytest.raises(ChildFailedError) as info:
        run_isolated(tasks.fail_unpicklably)
    assert info.value.type_name == "isolated_tasks.Unpicklable"
    assert "carries a lambda" in str(info.value)
    assert "fail_unpicklably" in info.value.child_traceback


def test_unpicklable_result_is_reported():
    with pytest.raises(ChildFailedError, match="cannot be pickled"):
        run_isolated(tasks.return_a_lock)


def test_timeout_stops_the_child():
    start = time.monotonic()
    with pytest.raises(ChildTimeoutError) as info:
        run_isolated(tasks.sleep, 60, timeout=1.5)
    assert time.monotonic() - start < 20
    assert info.value.exit.timed_out
    assert "timeout=1.5" in str(info.value)


def test_a_child_leaking_past_its_bound_is_stopped_and_reported():
    start = time.monotonic()
    with pytest.raises(ChildMemoryLimitError) as info:
        run_isolated(tasks.leak, 50, 200, 0.02, max_memory="400MiB", poll_interval=0.05)
    exit_info = info.value.exit
    assert exit_info.memory_exceeded and exit_info.peak_rss > 400 * MIB
    assert exit_info.peak_rss < 400 * MIB + 300 * MIB  # stopped within a few samples
    assert "max_memory" in str(info.value)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("signum, name", [(signal.SIGKILL, "SIGKILL"), (signal.SIGTERM, "SIGTERM")])
def test_a_child_ended_by_a_signal_is_reported(signum, name):
    with pytest.raises(ChildKilledError) as info:
        run_isolated(tasks.kill_self, signum)
    assert info.value.exit.signal == name
    assert name in str(info.value)


def test_a_child_that_exits_is_reported_with_its_code():
    with pytest.raises(ChildKilledError, match="exited with code 3") as info:
        run_isolated(tasks.exit_with, 3)
    assert info.value.exit.exitcode == 3


def test_environment_overrides_reach_only_the_child(monkeypatch):
    monkeypatch.delenv("MEMGUARD_TEST_VAR", raising=False)
    assert (
        run_isolated(tasks.read_env, "MEMGUARD_TEST_VAR", env={"MEMGUARD_TEST_VAR": "child"})
        == "child"
    )
    assert "MEMGUARD_TEST_VAR" not in os.environ


def test_a_lambda_travels_by_value():
    offset = 40
    assert run_isolated(lambda a: a + offset, 2) == 42


def test_an_argument_that_cannot_be_pickled_is_refused_at_once_with_the_fix():
    import threading

    with pytest.raises(ValueError, match=r"`fn`.*picklable arguments.*lock"):
        run_isolated(tasks.add, threading.Lock(), 1)


def test_a_function_the_child_cannot_import_says_why(tmp_path, monkeypatch):
    (tmp_path / "vanishing_module.py").write_text("def hello():\n    return 'hi'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_module

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(ValueError, match=r"`fn`.*vanishing_module") as info:
        run_isolated(vanishing_module.hello, timeout=60)
    assert "module level" in str(info.value)


def test_no_child_is_left_behind():
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    with pytest.raises(ChildTimeoutError):
        run_isolated(tasks.sleep, 60, timeout=1)
    run_isolated(tasks.add, 1, 2)
    time.sleep(0.5)
    after = {
        c.pid
        for c in me.children(recursive=True)
        if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
    }
    assert after <= before | {
        c.pid for c in me.children() if "resource_tracker" in " ".join(c.cmdline())
    }


@pytest.mark.tensorflow
def test_gpu_config_is_applied_in_the_child_before_fn():
    report, tf_loaded = run_isolated(
        tasks.child_state, gpu_config={"memory_growth": True}, timeout=120
    )
    assert "sees no GPU" in report  # this machine has none; the call ran and reported
    assert tf_loaded


def test_find_batch_size_converges_under_a_real_memory_bound():
    # Each example holds 4 MiB; the guard allows 380 MiB: 128 (512 MiB) and 256 fail,
    # 64 (256 MiB) fits, with room for the guard's reserve (growth until training stops,
    # ~20 MiB) and a second compile (JAX: 685 of 705 MiB once with 300 MiB allowed).
    found = find_batch_size(tasks.train_with_batch, 256, min_batch_size=16, timeout=180)
    assert found.batch_size == 64
    assert [(a.batch_size, a.outcome) for a in found.attempts] == [
        (256, "out of memory"),
        (128, "out of memory"),
        (64, "ok"),
    ]
    assert "MemoryLimitExceededError" in found.attempts[0].detail
    assert found.result > 0  # the training loss came back


def test_find_batch_size_gives_up_below_the_floor():
    with pytest.raises(BatchSizeSearchError, match="256, 128") as info:
        find_batch_size(tasks.leak, 256, min_batch_size=128, max_memory="200MiB", timeout=60)
    assert [a.outcome for a in info.value.attempts] == ["out of memory"] * 2


def test_find_batch_size_keep_warm_runs_the_retry_in_a_preloaded_spare():
    from keras_memguard.isolation import run as isolation

    try:
        train = functools.partial(tasks.fail_above, limit=32)
        found = find_batch_size(train, 64, keep_warm=True, preload=("wave",))
        pid, preloaded = found.result
        assert [(a.batch_size, a.outcome) for a in found.attempts] == [
            (64, "out of memory"),
            (32, "ok"),
        ]
        assert preloaded  # the retry ran in the spare the first attempt started
        (spare,) = isolation._spares.values()  # and the next spare waits
        assert spare.pid != pid
    finally:
        isolation.shutdown_spares()


def test_find_batch_size_reraises_other_failures():
    with pytest.raises(ValueError, match="64"):
        find_batch_size(tasks.fail, 64)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"factor": 1.0}, "factor"),
        ({"min_batch_size": 512}, "min_batch_size"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_find_batch_size_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        find_batch_size(tasks.add, **{"batch_size": 64, **kwargs})


def test_keep_warm_hands_the_next_call_a_preloaded_spare(monkeypatch):
    from keras_memguard.isolation import run as isolation

    monkeypatch.delenv("MEMGUARD_WARM", raising=False)
    options = {"env": {"MEMGUARD_WARM": "yes"}, "keep_warm": True, "preload": ("wave",)}
    try:
        first_pid, value, _ = run_isolated(tasks.pid_and_env, "MEMGUARD_WARM", **options)
        assert value == "yes"
        assert len(isolation._spares) == 1
        (spare,) = isolation._spares.values()
        second_pid, value, preloaded = run_isolated(tasks.pid_and_env, "MEMGUARD_WARM", **options)
        assert second_pid == spare.pid != first_pid  # the spare did the work
        assert value == "yes" and preloaded
        assert len(isolation._spares) == 1  # and a new spare waits for the next call
    finally:
        isolation.shutdown_spares()
    assert isolation._spares == {}
    spare.popen.wait(10)
    assert not spare.alive()


def test_a_spare_is_only_used_for_the_same_settings():
    from keras_memguard.isolation import run as isolation

    try:
        run_isolated(tasks.add, 1, 2, env={"A": "1"}, keep_warm=True, preload=())
        (spare,) = isolation._spares.values()
        pid, value, _ = run_isolated(
            tasks.pid_and_env, "A", env={"A": "2"}, keep_warm=True, preload=()
        )
        assert value == "2" and pid != spare.pid
        assert len(isolation._spares) == 2
    finally:
        isolation.shutdown_spares()


# --- Phases as people write them (issue #13) ---------------------------------------


def _alive(pid):
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(path, seconds=60):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    with open(path) as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_phase_can_use_its_own_process_pool(method):
    assert run_isolated(tasks.pool_sum, method, timeout=120) == 55


def test_a_phase_can_fit_a_pydataset_with_worker_processes():
    # JAX where it is installed (its workers fork cleanly); else this run's own backend.
    backend = "jax" if importlib.util.find_spec("jax") else backend_name()
    env = {"KERAS_BACKEND": backend}
    epochs = run_isolated(tasks.Squares.fit_with_workers, env=env, timeout=180)
    assert epochs == 1


def test_run_isolated_nests():
    value, middle_pid = run_isolated(tasks.nested_add, 40, 2, timeout=120)
    assert value == 42 and middle_pid != os.getpid()


def test_sys_exit_in_the_phase_is_an_error_in_the_driver_which_goes_on():
    with pytest.raises(ChildSystemExit) as info:
        run_isolated(tasks.system_exit, 3)
    assert info.value.code == 3 and info.value.exit.exitcode == 3
    assert "sys.exit(3)" in str(info.value)
    assert isinstance(info.value, ChildKilledError)  # caught where a dead child is
    assert run_isolated(tasks.system_exit, 0) is None  # success, as documented
    assert run_isolated(tasks.system_exit, None) is None
    assert run_isolated(tasks.add, 1, 2) == 3  # the driver is still here


@pytest.mark.parametrize("own_session", [False, True], ids=["same-group", "own-session"])
def test_a_timeout_ends_the_grandchildren_too(tmp_path, own_session):
    pidfile = str(tmp_path / "pids")
    with pytest.raises(ChildTimeoutError) as info:
        run_isolated(tasks.start_grandchild_and_sleep, pidfile, own_session, timeout=4)
    child, grandchild = _wait_for(pidfile)
    assert not _alive(child) and not _alive(grandchild)
    assert set(info.value.exit.ended_pids) == {child, grandchild}
    assert "ended 2 process(es)" in str(info.value)


def test_two_threads_each_get_their_own_bound():
    import threading

    from keras_memguard.probes import process as process_memory

    outcomes = {}

    def run(name, *args, **kwargs):
        try:
            outcomes[name] = run_isolated(*args, **kwargs)
        except Exception as err:
            outcomes[name] = err

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(process_memory, "CHILD_REFRESH_S", 0.05)  # re-list children often
        threads = [
            threading.Thread(
                target=run,
                args=("big", tasks.hold_with_grandchild, os.devnull + "-big", 300, 30),
                kwargs={"max_memory": "220MiB", "timeout": 60, "poll_interval": 0.02},
            ),
            threading.Thread(
                target=run,
                args=("small", tasks.hold_with_grandchild, os.devnull + "-small", 5, 4),
                kwargs={"max_memory": "220MiB", "timeout": 60, "poll_interval": 0.02},
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    assert isinstance(outcomes["big"], ChildMemoryLimitError), outcomes
    assert outcomes["big"].exit.peak_rss > 220 * MIB
    assert outcomes["small"] == "done", outcomes


def test_the_driver_environment_is_never_changed(monkeypatch):
    import threading

    monkeypatch.delenv("MEMGUARD_ONLY_CHILD", raising=False)
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if "MEMGUARD_ONLY_CHILD" in os.environ:
                seen.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(3):
            value = run_isolated(
                tasks.read_env, "MEMGUARD_ONLY_CHILD", env={"MEMGUARD_ONLY_CHILD": "1"}
            )
            assert value == "1"
    finally:
        stop.set()
        watcher.join()
    assert not seen


def test_an_input_that_cannot_travel_says_what_to_pass_instead():
    def numbers():
        yield 1

    with pytest.raises(ValueError, match=r"`args\[0\]`.*generator.*NumPy arrays, or a function"):
        run_isolated(tasks.add, numbers(), 1)


@pytest.mark.tensorflow
def test_a_tf_dataset_is_refused_with_the_fix():
    import tensorflow as tf

    data = tf.data.Dataset.range(4)
    with pytest.raises(ValueError, match=r"`x`.*tf.data.Dataset.*builds the dataset"):
        run_isolated(tasks.read_env, x=data)


_DRIVER = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # where it hangs, if it does
sys.path[:0] = {paths!r}
import isolated_tasks
from keras_memguard.backends.base import backend_name
from keras_memguard import run_isolated
run_isolated(isolated_tasks.start_grandchild_and_sleep, {pidfile!r}, True)
"""


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_a_driver_that_is_interrupted_leaves_no_child(tmp_path, how):
    import subprocess

    pidfile = str(tmp_path / "pids")
    script = tmp_path / "driver.py"
    paths = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]
    script.write_text(_DRIVER.format(paths=paths, pidfile=pidfile))
    # stderr to a file, not a pipe nobody reads: a full pipe would block the driver,
    # its child and its grandchild (all write to it) and read as a hang
    with open(tmp_path / "stderr", "wb") as stderr:
        driver = subprocess.Popen([sys.executable, str(script)], stderr=stderr)
    child, grandchild = _wait_for(pidfile)
    driver.send_signal(how)
    try:
        driver.wait(30)
    except subprocess.TimeoutExpired:
        driver.send_signal(signal.SIGUSR1)  # its threads' stacks to its stderr
        time.sleep(1)
        driver.kill()
        pytest.fail("the driver did not end: " + (tmp_path / "stderr").read_text()[-3000:])
    deadline = time.monotonic() + 15
    while (_alive(child) or _alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child) and not _alive(grandchild)


_UNGUARDED = """
import sys
sys.path[:0] = {paths!r}
from keras_memguard import run_isolated

SCALE = 10

def phase(n):
    return n * SCALE

print("result", run_isolated(phase, 4, timeout=60))
"""


def test_a_phase_defined_in_an_unguarded_script_runs_once(tmp_path):
    import subprocess

    script = tmp_path / "unguarded.py"
    paths = [os.path.dirname(os.path.dirname(__file__))]
    script.write_text(_UNGUARDED.format(paths=paths))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["result 40"]  # the script body ran once, not twice


def test_the_oom_kill_count_is_read_fresh_for_the_verdict(tmp_path, monkeypatch):
    from test_container_memory import v2_tree

    from keras_memguard.isolation import run as isolation

    fixture = v2_tree(tmp_path)  # a cgroup whose memory.events says oom_kill 1
    events = os.path.join(fixture.root, "kubepods", "pod1", "ctr", "memory.events")
    monkeypatch.setattr(
        isolation, "CgroupReader", lambda: type(fixture)(fixture.root, fixture.proc_cgroup)
    )
    assert fixture.read().oom_kills == 1  # a reader that caches would keep saying 1
    with pytest.raises(ChildKilledError, match="OOM killer") as info:
        run_isolated(tasks.oom_killed_like, events)  # the count rises within a second
    assert info.value.exit.oom_killed and info.value.exit.signal == "SIGKILL"
    with pytest.raises(ChildKilledError) as info:  # SIGKILL with no new OOM kill
        run_isolated(tasks.kill_self, signal.SIGKILL)
    assert not info.value.exit.oom_killed
