"""isolate_trials with real KerasTuner searches, each a script run as a user runs it.

tests/tuner_search.py has its build function in an unguarded ``__main__``; the searches
run on the JAX backend (the quickest to import) over sklearn's digits, 1 epoch a trial.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("keras_tuner")
pytest.importorskip("sklearn")

from keras_memguard import isolate_trials
from keras_memguard.isolation.tuner import SharedArray, _Isolation

MIB = 2**20
HERE = os.path.dirname(__file__)


def search(mode, trials, directory):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE), "KERAS_BACKEND": "jax"}
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "tuner_search.py"), mode, str(trials), directory],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_per_trial(rss):
    return (rss[-1] - rss[0]) / (len(rss) - 1)  # from the end of the first trial on


def test_isolated_random_search_completes_and_its_driver_stays_flat(tmp_path):
    trials = 4
    plain = search("plain", trials, str(tmp_path))
    isolated = search("warm", trials, str(tmp_path))
    for result in (plain, isolated):
        assert result["statuses"] == ["COMPLETED"] * trials, result["messages"]
        assert result["best_accuracy"] > 0.3  # the best model loaded (chance is 0.1)
    # In the driver only KerasTuner's search-space probe and get_best_models() build.
    assert isolated["builds_here"] == 2 and plain["builds_here"] == trials + 2
    plain_growth = growth_per_trial(plain["rss"])
    assert plain_growth > 2 * MIB  # what the plain search costs, measured here
    assert growth_per_trial(isolated["rss"]) < 0.25 * plain_growth


def test_hyperband_resumes_trials_in_isolated_processes_and_the_guard_runs_in_each(tmp_path):
    result = search("hyperband", 0, str(tmp_path))
    assert set(result["statuses"]) == {"COMPLETED"}, result["messages"]
    assert result["resumed"] >= 1  # a trial loaded an earlier trial's checkpoint
    assert max(result["epochs"]) == 2
    assert result["builds_here"] == 2
    assert result["spares_left"] == 0  # keep_warm's spare ended with the search
    # One MemGuardCallback passed to search(): KerasTuner's copy of it ran in every
    # trial's own process, wrote a run named after the trial, and one summary point.
    # (each trial's run also holds its heartbeat file: count the event files)
    events = [path for path in result["guard_logs"] if "tfevents" in path]
    runs = [path.split(os.sep)[0] for path in events]
    assert sorted(r for r in runs if r != "memory_fits") == sorted(
        f"memory_trial_{trial_id}" for trial_id in result["trial_ids"]
    )
    assert runs.count("memory_fits") == len(result["trial_ids"])


def test_a_trial_over_the_memory_bound_fails_and_bayesian_search_goes_on(tmp_path):
    result = search("bounded", 3, str(tmp_path))
    # BayesianOptimization, 2 random points then one from its model (fitted in the
    # driver to the trials so far). units 16 fits (two executions, two processes); 64
    # and 40 hold 2.5 GiB, past max_memory="1GiB".
    assert result["units"] == [16, 64, 40]
    assert result["statuses"] == ["COMPLETED", "FAILED", "FAILED"]
    assert all("max_memory" in message for message in result["messages"])
    assert result["best_units"] == 16


def test_isolate_trials_refuses_what_is_not_a_tuner():
    with pytest.raises(ValueError, match="`tuner`"):
        isolate_trials(object())


def test_large_arrays_are_written_once_and_memory_mapped(tmp_path):
    state = _Isolation({}, share_over=MIB)
    big = np.arange(MIB // 4, dtype="float32")  # 1 MiB
    small = np.arange(10)
    shared = state.share(((big, small), {"validation_data": (big, small)}))
    (first, kept), kwargs = shared
    assert isinstance(first, SharedArray) and kept is small
    assert kwargs["validation_data"][0] is first  # one file for one array
    assert state.share([big])[0] is first  # and for the next trial too
    loaded = first.load()
    assert isinstance(loaded, np.memmap) and np.array_equal(loaded, big)
    folder = os.path.dirname(first.path)
    state.release()
    assert not os.path.exists(folder)


_GUARDED_SEARCH = """
import sys

import keras
import keras_tuner
import numpy as np

import keras_memguard as mg


def build(hp):
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(hp.Int("units", 4, 16, step=4)),
         keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    return model


if __name__ == "__main__":
    x = np.random.default_rng(0).random((64, 8), dtype="float32")
    tuner = keras_tuner.RandomSearch(
        build, "val_loss", max_trials=2, directory=sys.argv[1], project_name="p", seed=0
    )
    mg.isolate_trials(tuner)
    tuner.search(x, x[:, :1], epochs=1, validation_split=0.25, verbose=0)
    print("statuses", sorted(t.status for t in tuner.oracle.trials.values()))
"""


def test_a_guarded_scripts_build_function_needs_no_cloudpickle(tmp_path):
    # `build` at module level, the search under the guard: the child runs the script as
    # __mp_main__. An import blocker hides cloudpickle (the test environments have it)
    # from the driver and the trials.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "cloudpickle.py").write_text("raise ImportError('blocked for this test')\n")
    script = tmp_path / "search.py"
    script.write_text(_GUARDED_SEARCH)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(blocker), os.path.dirname(HERE)]),
        "KERAS_BACKEND": "jax",
    }
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "tuning")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "statuses ['COMPLETED', 'COMPLETED']"
