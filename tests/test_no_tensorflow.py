"""Under JAX or PyTorch nothing of keras-memguard imports TensorFlow, also where it is
installed (this file runs in the TensorFlow environment too, with KERAS_BACKEND=jax).

Where TensorFlow is not installed (the JAX and PyTorch environments: every CI run of the
``torch`` case) a stand-in ``tensorflow`` package is put on the path: an import of it,
even one caught as an ``ImportError``, leaves a file naming where it came from. Without
it the check would pass by construction there.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.backends
HERE = os.path.dirname(os.path.abspath(__file__))

CODE = """
    import io, sys
    from contextlib import redirect_stdout
    import keras_memguard as mg
    from keras_memguard.cli.main import main
    assert [m for m in ("tensorflow", "jax", "torch") if m in sys.modules] == []
    mg.configure_gpus(memory_growth=True)
    mg.snapshot(); mg.release_memory(clear_caches=True)
    assert mg.run_isolated(isolated_tasks.add, 2, 3) == 5
    assert mg.find_batch_size(abs, 8).result == 8
    import keras, numpy as np
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    guard = mg.MemGuardCallback(log_dir=LOGS, max_process_memory="95%", verbose=0)
    model.fit(np.zeros((32, 4)), np.zeros((32, 1)), epochs=2, verbose=0, callbacks=[guard])
    with redirect_stdout(io.StringIO()) as out:
        assert main(["doctor"]) == 0
        assert main(["report", LOGS]) == 0
    assert "memory" in out.getvalue()
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    print("ok")
    """


STAND_IN = """
import traceback
with open({marker!r}, "w") as f:
    f.write("".join(traceback.format_stack()))
raise ImportError("a stand-in tensorflow: keras-memguard imported it under another backend")
"""


def run_without_tensorflow(backend, tmp_path, code=CODE):
    """Runs ``code`` under ``backend``; returns the process and the stand-in's marker."""
    path = [HERE, os.path.dirname(HERE)]
    marker = tmp_path / "tensorflow_imported.txt"
    if importlib.util.find_spec("tensorflow") is None:
        stand_in = tmp_path / "stand_in" / "tensorflow"
        stand_in.mkdir(parents=True)
        (stand_in / "__init__.py").write_text(STAND_IN.format(marker=str(marker)))
        path.append(str(stand_in.parent))
    code = f"import isolated_tasks\nLOGS = {str(tmp_path / 'logs')!r}\n" + textwrap.dedent(code)
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=os.pathsep.join(path))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    return result, marker


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_nothing_imports_tensorflow(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed in this environment")
    result, marker = run_without_tensorflow(backend, tmp_path)
    assert not marker.exists(), f"TensorFlow was imported from:\n{marker.read_text()}"
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None,
    reason="TensorFlow is installed: the check reads sys.modules after a real import",
)
def test_the_stand_in_sees_an_import_of_tensorflow(tmp_path):
    # Where TensorFlow is missing the check above must still be able to fail: an import
    # of it, even one caught as an ImportError, leaves the stand-in's marker.
    backend = next(b for b in ("torch", "jax") if importlib.util.find_spec(b) is not None)
    sneaky = """
    import sys
    try:
        import tensorflow
    except ImportError:
        pass
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    """
    result, marker = run_without_tensorflow(backend, tmp_path, sneaky)
    assert marker.exists() and "_find_and_load" in marker.read_text()
    assert result.returncode == 0  # the ImportError was caught: only the marker tells
