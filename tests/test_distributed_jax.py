"""The guard under keras.distribution.DataParallel on JAX, over two local (CPU) devices."""

from __future__ import annotations

import importlib.util

import pytest
from training import run_script

from keras_memguard.cli.report import read_run
from keras_memguard.guard.callback import LOG_KEYS

pytestmark = pytest.mark.backends


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_guard_under_jax_data_parallel(tmp_path):
    result, _ = run_script(
        "data_parallel_fit.py",
        workdir=tmp_path,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    assert result["devices"] == ["cpu:0", "cpu:1"]
    assert result["kernel_devices"] == 2  # the weights are replicated on both devices
    # A leak from epoch 1 on (30 MiB per batch of 16) crosses the bound mid-epoch: one
    # process drives both devices, so the guard halts it alone, with a checkpoint that
    # loads, before the bound.
    metric, epoch, batch, value = result["halt"]
    assert (metric, epoch, result["halts"]) == ("process_tree", 1, 1)
    assert batch is not None and batch < 15  # mid-epoch, not at its end
    assert value <= result["bound"] and result["peak"] <= result["bound"] + 64 * 2**20
    assert result["epochs"] == 2  # epoch 0 whole, epoch 1 halted
    assert result["restored_kernel"] == [8, 16]
    assert set(LOG_KEYS) <= set(result["history_keys"])
    # No GPU: JAX reports no allocator figures, and the guard logs none.
    assert result["device_memory"] is None
    scalars = read_run(str(tmp_path / "logs" / "memory")).scalars
    assert [s for s, _ in scalars["memory/process_tree_mib"]] == [0, 1]
    assert not any(tag.startswith("memory/gpu") for tag in scalars)
    assert result["frameworks"] == ["jax"]
