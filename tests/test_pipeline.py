"""dataset_from_tfds and the offline memguard_shapes dataset."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_memguard import DatasetUnavailableError, dataset_from_tfds
from keras_memguard.data.memguard_shapes import CLASSES, draw_shape
from keras_memguard.data.pipeline import _cache_key
from keras_memguard.data.placement import BUFFER_SHARE

KIB, MIB = 2**10, 2**20


def test_offline_builder_loads_through_plain_tfds_after_import(shapes_dir):
    code = textwrap.dedent(
        f"""
        import keras_memguard
        import tensorflow_datasets as tfds
        ds, info = tfds.load("memguard_shapes", split="test", data_dir={shapes_dir!r},
                             with_info=True, as_supervised=True)
        image, label = next(iter(ds))
        print(info.splits["train"].num_examples, info.splits["test"].num_examples,
              image.shape, image.dtype.name, info.features["label"].num_classes)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["6000", "1000", "(32,", "32,", "3)", "uint8", "4"]


def test_shapes_are_deterministic_and_distinct():
    a = [draw_shape(np.random.default_rng(1), label) for label in range(len(CLASSES))]
    b = [draw_shape(np.random.default_rng(1), label) for label in range(len(CLASSES))]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8
    # A shape is drawn in bright colours over a dark background.
    assert all((img.max(axis=2) >= 128).sum() > 20 for img in a)


def test_memory_cache_by_default_with_options_set(shapes_dir):
    ds, plan = dataset_from_tfds(
        "memguard_shapes", batch_size=32, data_dir=shapes_dir, with_info=True
    )
    assert plan.cache == "raw"  # no preprocessing: the raw examples are the finished ones
    assert plan.element_bytes == 32 * 32 * 3 + 8  # uint8 image + int64 label
    assert plan.cache_bytes == plan.raw_bytes == plan.element_bytes * 6000
    assert plan.shuffle_buffer == 6000
    options = ds.options()
    assert options.autotune.ram_budget == plan.buffer_budget == int(plan.ram_budget * BUFFER_SHARE)
    assert options.autotune.cpu_budget == len(os.sched_getaffinity(0))
    assert options.autotune.initial_parallelism == len(os.sched_getaffinity(0))
    assert options.deterministic is False
    images, labels = next(iter(ds))
    assert images.shape == (32, 32, 32, 3) and labels.shape == (32,)


def test_no_cache_when_it_does_not_fit_and_no_cache_dir(shapes_dir):
    _, plan = dataset_from_tfds(
        "memguard_shapes", batch_size=32, data_dir=shapes_dir, ram_budget="1MiB", with_info=True
    )
    assert plan.cache == "none"
    assert "do not fit" in plan.reason and "no cache_dir" in plan.reason
    assert plan.shuffle_buffer == int(MIB * 0.1) // plan.element_bytes  # capped by budget


def test_file_cache_when_ram_is_short_and_a_directory_is_given(shapes_dir, tmp_path):
    ds, plan = dataset_from_tfds(
        "memguard_shapes",
        "test",
        batch_size=100,
        data_dir=shapes_dir,
        ram_budget="1MiB",
        cache_dir=tmp_path,
        with_info=True,
    )
    assert plan.cache == "file"
    assert plan.cache_path.startswith(str(tmp_path))
    assert plan.shuffle_buffer == 0  # test split: not shuffled
    first = [labels.numpy() for _, labels in ds]
    files = os.listdir(tmp_path)
    assert any(f.startswith(os.path.basename(plan.cache_path)) for f in files)
    second = [labels.numpy() for _, labels in ds]  # read back from the file cache
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(second))


def test_file_cache_key_names_dataset_version_and_split(shapes_dir):
    builder = tfds.builder("memguard_shapes", data_dir=shapes_dir)
    key = _cache_key(builder, "train[:50%]", True)
    assert key.startswith("memguard_shapes-small-1.0.0-train_50")
    big = tfds.builder("memguard_shapes/cifar10_size", data_dir=shapes_dir)
    assert _cache_key(big, "train[:50%]", True).startswith("memguard_shapes-cifar10_size-1.0.0")
    assert key != _cache_key(builder, "train", True)
    assert key != _cache_key(builder, "train[:50%]", False)
    assert key == _cache_key(builder, "train[:50%]", True)


def test_asking_for_a_memory_cache_that_cannot_fit_is_an_error(shapes_dir):
    with pytest.raises(
        ValueError, match=r"`cache`.*cache='raw'.*≈17\.\d MiB.*RAM budget of 1\.0 MiB"
    ):
        dataset_from_tfds(
            "memguard_shapes", batch_size=32, data_dir=shapes_dir, ram_budget="1MiB", cache="raw"
        )


def test_preprocess_and_batch_preprocess_apply_in_order(shapes_dir):
    def to_float(image, label):
        return tf.cast(image, tf.float32) / 255.0, label

    def resize(images, labels):
        return tf.image.resize(images, (48, 48)), labels

    ds = dataset_from_tfds(
        "memguard_shapes",
        "test",
        batch_size=10,
        data_dir=shapes_dir,
        preprocess=to_float,
        batch_preprocess=resize,
        drop_remainder=True,
        seed=3,
    )
    images, _ = next(iter(ds))
    assert images.shape == (10, 48, 48, 3) and images.dtype == tf.float32
    assert float(tf.reduce_max(images)) <= 1.0
    assert ds.options().deterministic is True


def test_seed_makes_the_order_reproducible(shapes_dir):
    def labels(seed):
        ds = dataset_from_tfds(
            "memguard_shapes", "train[:10%]", batch_size=50, data_dir=shapes_dir, seed=seed
        )
        return np.concatenate([y.numpy() for _, y in ds.take(4)])

    np.testing.assert_array_equal(labels(5), labels(5))
    assert not np.array_equal(labels(5), labels(6))


def test_pipeline_wiring_with_mock_data():
    with tfds.testing.mock_data(num_examples=40):
        ds, plan = dataset_from_tfds(
            "mnist",
            batch_size=8,
            with_info=True,
            batch_preprocess=lambda x, y: (tf.cast(x, tf.float32), y),
        )
        batches = list(ds)
    assert len(batches) == 5
    assert batches[0][0].shape == (8, 28, 28, 1) and batches[0][0].dtype == tf.float32
    assert plan.cache == "none"  # no recorded size under mock data: nothing to estimate


def test_unknown_dataset_fails_fast_with_the_fix():
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError, match="'no_such_dataset_xyz'") as info:
        dataset_from_tfds("no_such_dataset_xyz", batch_size=8)
    assert "memguard_shapes" in str(info.value)
    assert time.monotonic() - start < 10


def test_missing_split_names_the_available_ones(shapes_dir):
    with pytest.raises(ValueError, match=r"`split`.*\['test', 'train'\]"):
        dataset_from_tfds("memguard_shapes", "validation", batch_size=8, data_dir=shapes_dir)


def test_unprepared_dataset_offline_fails_fast_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_MEMGUARD_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as info:
        dataset_from_tfds("cifar10", batch_size=8, data_dir=tmp_path)
    message = str(info.value)
    assert "'cifar10' is not prepared" in message and "data_dir" in message
    assert "memguard_shapes" in message and "connected machine" in message
    assert time.monotonic() - start < 10
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        dataset_from_tfds("cifar10", batch_size=8, data_dir=tmp_path, download=False)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -4}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": 8, "shuffle_buffer": -1}, "shuffle_buffer"),
        ({"batch_size": 8, "cache": "disk"}, "cache"),
        ({"batch_size": 8, "ram_budget": "-1GB"}, "ram_budget"),
        ({"batch_size": 8, "preprocess": "resize"}, "preprocess"),
        ({"batch_size": 8, "cache": "file"}, "cache_dir"),
    ],
)
def test_bad_numbers_name_the_parameter(shapes_dir, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        dataset_from_tfds("memguard_shapes", data_dir=shapes_dir, **kwargs)


def test_short_real_fit_learns_the_shapes(shapes_dir):
    import keras

    def scale(images, labels):
        return tf.cast(images, tf.float32) / 255.0, labels

    train = dataset_from_tfds(
        "memguard_shapes", batch_size=64, data_dir=shapes_dir, batch_preprocess=scale, seed=0
    )
    test = dataset_from_tfds(
        "memguard_shapes", "test", batch_size=250, data_dir=shapes_dir, batch_preprocess=scale
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, epochs=3, verbose=0)
    _, accuracy = model.evaluate(test, verbose=0)
    assert accuracy > 0.5  # chance is 0.25


def test_repeat_keeps_one_iterator_for_fit_with_steps_per_epoch(shapes_dir):
    import keras

    def scale(images, labels):
        return tf.cast(images, tf.float32) / 255.0, labels

    ds, plan = dataset_from_tfds(
        "memguard_shapes",
        "train[:640]",
        batch_size=64,
        data_dir=shapes_dir,
        batch_preprocess=scale,
        repeat=True,
        with_info=True,
    )
    assert plan.steps_per_epoch == 10
    assert ds.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(ds, epochs=2, steps_per_epoch=plan.steps_per_epoch, verbose=0)
    assert len(history.history["loss"]) == 2
    assert int(model.optimizer.iterations.numpy()) == 20
    _, dropped = dataset_from_tfds(
        "memguard_shapes",
        "train[:650]",
        batch_size=64,
        data_dir=shapes_dir,
        drop_remainder=True,
        with_info=True,
    )
    assert dropped.steps_per_epoch == 10
