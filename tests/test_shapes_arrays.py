"""memguard_shapes as NumPy arrays (no TensorFlow), the same examples TFDS serves,
and dataset_from_tfds naming the [tensorflow] extra where TensorFlow is missing."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_memguard.data.shapes import CLASSES, load_shapes_arrays

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.backends
def test_arrays_are_balanced_deterministic_uint8_images():
    x, y = load_shapes_arrays("test")
    assert x.shape == (1000, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (1000,) and sorted(set(y.tolist())) == list(range(len(CLASSES)))
    assert np.bincount(y).tolist() == [250] * 4
    again, _ = load_shapes_arrays("test")
    assert np.array_equal(x, again)
    with pytest.raises(ValueError, match="split"):
        load_shapes_arrays("validation")


def test_arrays_hold_the_examples_tfds_serves(shapes_dir):
    import tensorflow_datasets as tfds

    served = tfds.as_numpy(tfds.load("memguard_shapes", split="test", data_dir=shapes_dir))
    digest = lambda image, label: hashlib.sha1(image.tobytes() + bytes([label])).hexdigest()  # noqa: E731
    from_tfds = sorted(digest(e["image"], int(e["label"])) for e in served)
    x, y = load_shapes_arrays("test")
    assert sorted(digest(i, int(lab)) for i, lab in zip(x, y, strict=True)) == from_tfds


@pytest.mark.backends
def test_without_tensorflow_arrays_train_and_dataset_from_tfds_names_the_extra():
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed here; this runs in the JAX and torch environments")
    code = """
        import sys
        import keras, keras_memguard as mg
        from keras_memguard.data.shapes import load_shapes_arrays
        x, y = load_shapes_arrays("test")
        model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                                  keras.layers.Dense(4, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x / 255.0, y, epochs=1, batch_size=100, verbose=0,
                  callbacks=[mg.MemGuardCallback()])
        try:
            mg.dataset_from_tfds
        except ImportError as err:
            print("ERROR:", err)
        """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "keras-memguard[tensorflow]" in result.stdout
