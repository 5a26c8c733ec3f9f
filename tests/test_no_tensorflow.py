"""Under JAX or PyTorch nothing of keras-memguard imports TensorFlow, also where it is
installed (this file runs in the TensorFlow environment too, with KERAS_BACKEND=jax)."""

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


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_nothing_imports_tensorflow(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed in this environment")
    code = f"import isolated_tasks\nLOGS = {str(tmp_path / 'logs')!r}\n" + textwrap.dedent(CODE)
    env = dict(
        os.environ, KERAS_BACKEND=backend, PYTHONPATH=HERE + os.pathsep + os.path.dirname(HERE)
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
