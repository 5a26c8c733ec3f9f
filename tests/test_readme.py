"""The README's Python snippets run as written on the backends they say they are for.

Each snippet's first line names its backends (``# backend: tensorflow, jax, torch``);
the test runs those for the backend in use, each in a fresh Python in a temporary
directory. Only ``[...]`` (the user's layers) is filled in, with a small model.
"""

import os
import re
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = (
    "[keras.Input((32, 32, 3)), keras.layers.Rescaling(1.0), keras.layers.Flatten(), "
    'keras.layers.Dense(4, activation="softmax")]'
)


def snippets():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_every_snippet_says_its_backends():
    found = snippets()
    assert len(found) >= 3
    for code in found:
        assert re.match(r"# backend: (tensorflow|jax|torch)(, (jax|torch))*\n", code), code


@pytest.mark.parametrize("index", range(len(snippets())))
def test_readme_snippet_runs(index, request, tmp_path):
    code = snippets()[index]
    backends = code.splitlines()[0].removeprefix("# backend: ").split(", ")
    backend = keras.backend.backend()
    if backend not in backends:
        pytest.skip(f"README snippet {index} is for {backends}, not {backend}")
    code = code.replace("keras.Sequential([...])", f"keras.Sequential({LAYERS})")
    assert "..." not in code, "a placeholder this test does not know how to fill"
    env = {**os.environ, "PYTHONPATH": ROOT}
    if "dataset_from_tfds" in code:  # the TFDS copy of the offline data, prepared once
        env["TFDS_DATA_DIR"] = request.getfixturevalue("shapes_dir")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
