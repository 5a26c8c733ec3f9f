"""`memguard report` on event files written by a real fit()."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image
from test_snapshot_and_doctor import memguard_command
from training import tiny_data, tiny_model

from keras_memguard import MemGuardCallback
from keras_memguard.cli.main import main

MIB = 2**20


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    """Three log dirs: a fit of 3 epochs, a fit halted by its bound, two fits of one guard."""
    root = tmp_path_factory.mktemp("report")
    x, y = tiny_data()
    tiny_model().fit(
        x,
        y,
        epochs=3,
        verbose=0,
        callbacks=[MemGuardCallback(log_dir=root / "calm", verbose=0, max_process_memory="90%")],
    )
    tiny_model().fit(
        x,
        y,
        epochs=3,
        verbose=0,
        callbacks=[
            MemGuardCallback(
                log_dir=root / "halted", verbose=0, max_process_memory=MIB, check_every_n_batches=1
            )
        ],
    )
    loop = MemGuardCallback(log_dir=root / "loop", verbose=0)
    model = tiny_model()
    for _ in range(2):  # one guard's fits continue one run
        model.fit(x, y, epochs=1, verbose=0, callbacks=[loop])
    return root


def memguard(*args):
    return subprocess.run([*memguard_command(), *args], capture_output=True, text=True, timeout=120)


def test_text_report_per_run(log_dir):
    out = memguard("report", str(log_dir))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "run calm/memory (3 epochs)" in text
    assert "run halted/memory (1 epochs)" in text
    assert "process tree" in text and "available" in text and "process bound" in text
    assert "halts: 0" in text and "halts: 1" in text
    assert "max_process_memory" in text  # the halt's own message
    assert "run loop/memory (2 epochs in 2 fits)" in text
    assert "fits in loop/memory_fits (2)" in text


def test_json_report(log_dir):
    out = memguard("report", str(log_dir), "--json")
    assert out.returncode == 0, out.stderr
    runs = {r["run"]: r for r in json.loads(out.stdout)}
    calm, halted = runs["calm/memory"], runs["halted/memory"]
    rss = calm["figures"]["process_tree_mib"]
    assert rss["epochs"] == 3 and rss["lowest"] <= rss["final"] <= rss["peak"]
    assert halted["figures"]["bound_process_mib"]["final"] == pytest.approx(1.0)
    assert len(halted["halts"]) == 1 and calm["halts"] == []
    assert calm["fit_indices"] == [1] and runs["loop/memory"]["fit_indices"] == [1, 2]
    assert runs["loop/memory"]["figures"]["process_tree_mib"]["epochs"] == 2


def test_plot_is_a_png(log_dir, tmp_path):
    path = tmp_path / "memory.png"
    assert main(["report", str(log_dir), "--plot", str(path)]) == 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 600


def test_plot_without_matplotlib_names_the_extra(log_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", str(log_dir), "--plot", str(tmp_path / "x.png")]) == 1
    assert "pip install 'keras-memguard[plot]'" in capsys.readouterr().err


def test_empty_and_missing_directories_are_clear_errors(tmp_path):
    out = memguard("report", str(tmp_path))
    assert out.returncode == 1
    assert "No keras-memguard memory scalars" in out.stderr
    out = memguard("report", str(tmp_path / "missing"))
    assert out.returncode == 1 and "is not a directory" in out.stderr
    assert not os.path.exists(tmp_path / "missing")
