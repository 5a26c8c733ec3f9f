"""The real TensorBoard server serves the guard's memory run, its tags and values."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import keras
import pytest
from training import read_scalars, tiny_data, tiny_model

from keras_memguard import MemGuardCallback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


# Keras's own TensorBoard callback needs TensorFlow; the guard's run never does.
WITH_KERAS_TENSORBOARD = keras.config.backend() == "tensorflow"
pytestmark = pytest.mark.backends


@pytest.fixture
def served_log_dir(tmp_path):
    keras_tensorboard = (
        [keras.callbacks.TensorBoard(str(tmp_path))] if WITH_KERAS_TENSORBOARD else []
    )
    x, y = tiny_data()
    tiny_model().fit(
        x,
        y,
        epochs=3,
        verbose=0,
        validation_data=(x[:64], y[:64]),
        callbacks=[
            MemGuardCallback(log_dir=tmp_path, verbose=0),
            *keras_tensorboard,
        ],
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        yield tmp_path, port
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)


def test_tensorboard_serves_the_memory_run(served_log_dir):
    log_dir, port = served_log_dir
    deadline, tags = time.monotonic() + 90, {}
    while time.monotonic() < deadline:
        try:
            tags = get(port, "/data/plugin/scalars/tags")
            if "memory/process_tree_mib" in tags.get("memory", {}):
                break
        except OSError:
            pass
        time.sleep(1)
    assert "memory" in tags, f"TensorBoard never listed the memory run: {sorted(tags)}"
    if WITH_KERAS_TENSORBOARD:  # beside Keras's own runs, in the same log directory
        assert {"train", "validation"} <= set(get(port, "/data/runs"))
    expected = read_scalars(str(log_dir / "memory"))
    assert set(tags["memory"]) == set(expected)
    query = urllib.parse.urlencode({"run": "memory", "tag": "memory/process_tree_mib"})
    served = get(port, f"/data/plugin/scalars/scalars?{query}")
    assert [(step, round(value, 3)) for _, step, value in served] == [
        (step, round(value, 3)) for step, value in expected["memory/process_tree_mib"]
    ]
    assert [step for _, step, _ in served] == [0, 1, 2]
