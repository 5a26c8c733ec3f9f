"""configure_gpus and the GPU probes on a real NVIDIA GPU (skipped without one).

Each test runs in a fresh process: GPU settings apply only before TensorFlow
initializes its devices, once per process.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from keras_memguard.probes import nvml

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not nvml.visible_devices(), reason="needs an NVIDIA GPU and NVML"),
]


def run(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_limit_is_applied_and_enforced():
    result = run(
        """
        import json
        import keras_memguard as mg
        report = mg.configure_gpus(memory_limit="2GiB")
        import tensorflow as tf
        logical = tf.config.list_logical_devices("GPU")
        with tf.device("/GPU:0"):
            small = tf.zeros((256, 2**20), tf.float32)  # 1 GiB: fits
            try:
                big = tf.zeros((768, 2**20), tf.float32)  # 3 GiB: above the limit
                big_ok = True
            except tf.errors.ResourceExhaustedError:
                big_ok = False
        print(json.dumps({"logical": len(logical), "limit": report.gpus[0].memory_limit,
                          "small": int(small.shape[0]), "big_ok": big_ok}))
        """
    )
    assert result["logical"] >= 1 and result["limit"] == 2 * 2**30
    assert result["small"] == 256 and result["big_ok"] is False


def test_memory_growth_keeps_the_process_small():
    result = run(
        """
        import json
        import keras_memguard as mg
        mg.configure_gpus(memory_growth=True)
        import tensorflow as tf
        with tf.device("/GPU:0"):
            x = tf.ones((1024, 1024))
        gpu = mg.snapshot().gpus[0]
        print(json.dumps({"total": gpu.total, "allocated": gpu.allocated,
                          "device_used": gpu.device_used}))
        """
    )
    assert result["allocated"] >= 4 * 2**20
    # Growth on: the device holds little more than the CUDA context and this tensor
    # (the whole device's figure, which NVML gives even inside PID namespaces).
    assert result["device_used"] < 0.5 * result["total"]


def test_report_totals_match_nvml():
    result = run(
        """
        import json
        import keras_memguard as mg
        from keras_memguard.probes import nvml
        report = mg.configure_gpus(memory_limit=0.25)
        print(json.dumps({"totals": [g.total for g in report.gpus],
                          "limits": [g.memory_limit for g in report.gpus],
                          "nvml": [d.total for d in nvml.visible_devices()]}))
        """
    )
    assert result["totals"] == result["nvml"]
    for limit, total in zip(result["limits"], result["totals"], strict=True):
        assert abs(limit - total // 4) <= 2**20


def test_guard_halts_on_max_gpu_memory():
    result = run(
        """
        import json
        import numpy as np
        import keras_memguard as mg
        mg.configure_gpus(memory_growth=True)
        import keras
        held = []
        class GpuLeak(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                import tensorflow as tf
                with tf.device("/GPU:0"):
                    held.append(tf.ones((64, 2**20)))  # 256 MiB a batch
        x = np.random.rand(512, 8).astype("float32"); y = (x.sum(1) > 4).astype("int32")
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        guard = mg.MemGuardCallback(max_gpu_memory="2GiB", check_every_n_batches=1, verbose=0)
        model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[GpuLeak(), guard])
        halt = guard.summary.halts[0]
        print(json.dumps({"metric": halt.metric, "value": halt.value, "bound": halt.bound}))
        """
    )
    assert result["metric"] == "gpu0_allocated_peak"
    assert result["bound"] < result["value"] <= result["bound"] + 300 * 2**20


def test_guard_halts_on_the_in_step_peak_that_live_bytes_miss():
    # Each step's activations (8192 x 32768 floats = 1 GiB, and their gradients) are
    # freed before the batch-end hook: live bytes stay small, the step's peak does not.
    result = run(
        """
        import json
        import numpy as np
        import keras_memguard as mg
        mg.configure_gpus(memory_growth=True)
        import keras
        x = np.random.rand(8192 * 2, 64).astype("float32"); y = x.sum(1, keepdims=True)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32768, "relu"),
                                  keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        guard = mg.MemGuardCallback(max_gpu_memory="1GiB", check_every_n_batches=1, verbose=0)
        model.fit(x, y, batch_size=8192, epochs=1, verbose=0, callbacks=[guard])
        halt = guard.summary.halts[0]
        live = mg.snapshot().gpus[0].allocated
        print(json.dumps({"metric": halt.metric, "value": halt.value, "bound": halt.bound,
                          "batch": halt.batch, "live": live}))
        """
    )
    assert result["metric"] == "gpu0_allocated_peak" and result["batch"] == 0
    assert result["value"] > result["bound"] == 2**30
    assert result["live"] < result["bound"]  # what the old comparison saw: no halt
