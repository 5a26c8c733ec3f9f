"""`memguard report` and `memguard doctor` as a user runs them: no ML framework
imported (also where TensorFlow is installed and is the Keras backend), nothing on
stderr (no TensorFlow start-up lines), and every section printed once.

Their start-up time (< 1.5 s) is measured by benchmarks/bench_cli.py, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_snapshot_and_doctor import memguard_command
from training import tiny_data, tiny_model

from keras_memguard import MemGuardCallback

pytestmark = pytest.mark.backends
FRAMEWORKS = ("tensorflow", "jax", "torch", "keras", "tf_keras")
MIB = 2**20

# Runs the command line in a fresh interpreter, then lists the frameworks it imported.
PROBE = textwrap.dedent(
    """
    import io, json, os, sys
    if os.environ.get("FAKE_GPUS"):  # NVML sees a GPU (fake module, as in conftest)
        import fake_nvml
        gpu = fake_nvml.FakeGpu("Fake H100", "GPU-aaaa-1111", 80 * 2**30, used=0)
        sys.modules["pynvml"] = fake_nvml.FakeNvml([gpu])
    from contextlib import redirect_stdout
    from keras_memguard.cli.main import main
    with redirect_stdout(io.StringIO()):
        code = main(sys.argv[2:])
    loaded = [m for m in sys.modules if m.split(".")[0] in {frameworks!r}]
    with open(sys.argv[1], "w") as f:
        json.dump({{"code": code, "loaded": loaded}}, f)
    """
).format(frameworks=set(FRAMEWORKS))


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    """Two runs under one directory, one halted, with batch-level scalars too."""
    root = tmp_path_factory.mktemp("cli")
    x, y = tiny_data(samples=64)
    for name, bound in (("calm", "90%"), ("halted", MIB)):
        guard = MemGuardCallback(
            log_dir=root / name,
            max_process_memory=bound,
            check_every_n_batches=1,
            log_every_n_batches=2,
        )
        tiny_model().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[guard])
    return root


def env():
    # The backend the user configured stays as it is: TensorFlow in its environment.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.mark.parametrize(
    "args", [["doctor"], ["doctor", "--json"], ["report"], ["report", "--json"]]
)
def test_cli_imports_no_ml_framework(args, log_dir, tmp_path):
    args = [*args, str(log_dir)] if args[0] == "report" else args
    result_path = tmp_path / "result.json"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(result_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(result_path.read_text())
    assert result == {"code": 0, "loaded": []}


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_doctor_on_a_gpu_machine_imports_no_framework(backend, tmp_path):
    """Also where the configured backend's framework is not installed (no crash)."""
    result_path = tmp_path / "result.json"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(result_path), "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env(), "FAKE_GPUS": "1", "KERAS_BACKEND": backend},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(result_path.read_text()) == {"code": 0, "loaded": []}


def sections(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(" ")]


def test_doctor_prints_each_section_once_and_nothing_on_stderr():
    out = subprocess.run(
        [*memguard_command(), "doctor"], capture_output=True, text=True, timeout=120, env=env()
    )
    assert out.returncode == 0
    assert out.stderr == ""
    headings = sections(out.stdout)
    assert {"Versions", "Process", "Host", "Effective", "GPUs"} <= set(headings)
    assert len(headings) == len(set(headings)), headings


def test_report_prints_each_row_once_per_run_and_nothing_on_stderr(log_dir):
    out = subprocess.run(
        [*memguard_command(), "report", str(log_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
    )
    assert out.returncode == 0
    assert out.stderr == ""
    runs = out.stdout.split("\nrun ")
    assert sections(out.stdout) == [
        "run calm/memory (2 epochs)",
        "fits in calm/memory_fits (1)",
        "run halted/memory (1 epochs)",
        "fits in halted/memory_fits (1)",
    ]
    for run in runs:
        if run.startswith("fits in") or "\nfits in" in run:
            run = run.split("\nfits in")[0]
        labels = [line.split("  ")[1] for line in run.splitlines()[1:] if line.startswith("  ")]
        labels = [label for label in labels if label]
        assert len(labels) == len(set(labels)), labels
        assert sum(label.startswith("halts:") for label in labels) == 1
        assert sum(label.startswith("available floor") for label in labels) == 1
