"""The guard in a real fit() on JAX and PyTorch: a leak halted with a loadable
checkpoint, TensorBoard events read back, History keys, and no TensorFlow imported.

Run where the framework is installed; the JAX case also runs in the TensorFlow
environment, where TensorFlow is installed and could be imported by mistake.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from training import run_script

from keras_memguard.cli.report import read_run
from keras_memguard.guard.callback import LOG_KEYS

pytestmark = [pytest.mark.backends, pytest.mark.slow]


@pytest.fixture(scope="module", params=["jax", "torch"])
def guarded_fit(request, tmp_path_factory):
    backend = request.param
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed in this environment")
    workdir = tmp_path_factory.mktemp(backend)
    result, _ = run_script("backend_fit.py", workdir=workdir, KERAS_BACKEND=backend)
    return backend, workdir, result


def test_leak_halted_with_a_loadable_checkpoint(guarded_fit):
    backend, _, result = guarded_fit
    assert result["backend"] == backend
    assert result["halt"] is not None, "the guard never halted a 25 MiB/batch leak"
    assert result["halt"]["metric"] == "process_tree"
    # Saved once, at the halt (issue #23): before the batch Keras still runs after a stop
    # at a batch's begin, so one step fewer than the model fit returned.
    step_after = result["halt"]["batch"] is not None
    assert result["restored_iterations"] == result["iterations"] - step_after > 0


def test_tensorboard_events_and_history_keys(guarded_fit):
    _, workdir, result = guarded_fit
    run = read_run(os.path.join(workdir, "logs", "memory"))
    assert "memory/process_tree_mib" in run.scalars
    assert len(run.halts) == 1 and "max_process_memory" in run.halts[0]
    assert set(LOG_KEYS) <= set(result["history_keys"])


def test_no_tensorflow_imported(guarded_fit):
    backend, _, result = guarded_fit
    assert result["frameworks"] == [backend]
