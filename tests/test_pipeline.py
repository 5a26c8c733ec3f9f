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
from keras_memguard.sizes import format_bytes

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
        seed=0,  # deterministic: parallel batching may reorder batches without one
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


@pytest.mark.parametrize("cache", ["raw", "preprocessed"])
def test_seed_makes_the_order_reproducible(shapes_dir, cache):
    def to_float(images, labels):
        return tf.cast(images, tf.float32), labels

    def labels(seed):
        ds = dataset_from_tfds(
            "memguard_shapes",
            "train[:10%]",
            batch_size=50,
            data_dir=shapes_dir,
            batch_preprocess=to_float,
            cache=cache,
            seed=seed,
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


def _keys(images):
    """One key per example: its bytes (every memguard_shapes image differs)."""
    return [image.tobytes() for image in np.asarray(images)]


def _counting(counter):
    """A per-example preprocess that counts its calls, and a batch resize to 40×40 float."""

    def preprocess(image, label):
        def bump(value):
            counter.append(1)
            return value

        counted = tf.py_function(bump, [label], tf.int64)
        counted.set_shape(label.shape)  # py_function forgets shapes
        return image, counted

    def batch_preprocess(images, labels):
        return tf.image.resize(tf.cast(images, tf.float32) / 255.0, (40, 40)), labels

    return preprocess, batch_preprocess


# 600 examples; raw 600 × 3,080 B ≈ 1.8 MiB; preprocessed (40×40×3 float32 + label)
# 600 × 19,208 B ≈ 11.0 MiB.
RAW_600, PRE_600 = 600 * 3080, 600 * (40 * 40 * 3 * 4 + 8)


@pytest.mark.parametrize(
    "budget, cache_dir, expected",
    [
        ("64MiB", False, "preprocessed"),  # 11 MiB fits half of 64 MiB
        ("8MiB", False, "raw"),  # only the 1.8 MiB fits half of 8 MiB
        ("2MiB", True, "file"),  # neither fits half of 2 MiB; a directory is given
        ("2MiB", False, "none"),
    ],
)
def test_auto_places_the_cache_by_both_sizes_and_logs_one_line(
    shapes_dir, tmp_path, caplog, budget, cache_dir, expected
):
    preprocess, batch_preprocess = _counting([])
    with caplog.at_level("INFO", logger="keras_memguard"):
        _, plan = dataset_from_tfds(
            "memguard_shapes",
            "train[:600]",
            batch_size=50,
            data_dir=shapes_dir,
            preprocess=preprocess,
            batch_preprocess=batch_preprocess,
            ram_budget=budget,
            cache_dir=tmp_path if cache_dir else None,
            with_info=True,
        )
    assert plan.cache == expected
    assert (plan.raw_bytes, plan.preprocessed_bytes) == (RAW_600, PRE_600)
    assert plan.cache_bytes == {"preprocessed": PRE_600, "raw": RAW_600, "file": RAW_600}.get(
        expected, 0
    )
    line = str(plan)
    assert "\n" not in line
    assert "preprocessed ≈11.0 MiB, raw ≈1.8 MiB" in line
    assert plan.reason in line and f"RAM budget {budget[:-3]}.0 MiB" in line
    assert f"tf.data buffers ≤ {format_bytes(plan.buffer_budget)}" in line
    logged = [r.getMessage() for r in caplog.records if "keras-memguard pipeline" in r.message]
    assert logged == [f"keras-memguard pipeline: {line}"]


@pytest.mark.parametrize("cache", ["preprocessed", "raw", "file", "none"])
def test_each_placement_runs_two_epochs_and_preprocesses_as_often_as_it_says(
    shapes_dir, tmp_path, cache
):
    calls = []
    preprocess, batch_preprocess = _counting(calls)
    ds, plan = dataset_from_tfds(
        "memguard_shapes",
        "train[:600]",
        batch_size=50,
        data_dir=shapes_dir,
        preprocess=preprocess,
        batch_preprocess=batch_preprocess,
        cache=cache,
        cache_dir=tmp_path,
        seed=0,
        with_info=True,
    )
    assert plan.cache == cache
    epochs = []
    for _ in range(2):
        images = np.concatenate([x.numpy() for x, _ in ds])
        assert images.shape == (600, 40, 40, 3) and images.dtype == np.float32
        epochs.append(_keys(images))
    assert len(set(epochs[0])) == 600 and set(epochs[0]) == set(epochs[1])
    # The preprocessed cache runs preprocess once per example; the others every epoch.
    assert len(calls) == (600 if cache == "preprocessed" else 1200)
    if cache == "file":
        assert any(f.startswith(os.path.basename(plan.cache_path)) for f in os.listdir(tmp_path))


def test_preprocessed_cache_still_reshuffles_examples_every_epoch(shapes_dir):
    _, batch_preprocess = _counting([])
    ds, plan = dataset_from_tfds(
        "memguard_shapes",
        "train[:600]",
        batch_size=50,
        data_dir=shapes_dir,
        batch_preprocess=batch_preprocess,
        cache="preprocessed",
        seed=1,
        repeat=True,
        with_info=True,
    )
    assert plan.shuffle_buffer == 600
    iterator = iter(ds)
    epochs = [
        [frozenset(_keys(next(iterator)[0])) for _ in range(plan.steps_per_epoch)] for _ in range(3)
    ]
    for epoch in epochs:
        assert len(frozenset().union(*epoch)) == 600  # every example once per epoch
    # Not one batch of epoch 1 comes back whole in epoch 2 or 3: examples are
    # reshuffled, not the cached batches of batch_preprocess.
    assert not set(epochs[0]) & set(epochs[1])
    assert not set(epochs[0]) & set(epochs[2])
    assert epochs[1] != epochs[2]


def test_augment_runs_after_the_preprocessed_cache_every_epoch(shapes_dir):
    preprocess_calls, augment_calls = [], []
    preprocess, batch_preprocess = _counting(preprocess_calls)

    def augment(images, labels):
        # Adds 0.001 × its call number: a different shift every epoch, as random
        # augmentation would draw (tf.random here would repeat its draws in each fresh
        # iterator once a global seed is set, e.g. by an earlier test).
        def bump():
            augment_calls.append(1)
            return np.float32(len(augment_calls))

        shift = tf.py_function(bump, [], tf.float32)
        return images + 0.001 * shift, labels

    ds, plan = dataset_from_tfds(
        "memguard_shapes",
        "test[:200]",
        batch_size=50,
        data_dir=shapes_dir,
        preprocess=preprocess,
        batch_preprocess=batch_preprocess,
        augment=augment,
        cache="preprocessed",
        seed=0,  # deterministic order, so the two epochs line up
        with_info=True,
    )
    assert plan.cache == "preprocessed"
    first, second = (np.concatenate([x.numpy() for x, _ in ds]) for _ in range(2))
    assert len(preprocess_calls) == 200 and len(augment_calls) == 8  # 4 batches × 2 epochs
    # Same examples in the same order (test split, seed); epoch 2's shifts (5..8 × 0.001)
    # all exceed epoch 1's (1..4 × 0.001).
    moved = second - first
    assert moved.min() > 0.0005 and moved.max() < 0.0075


def test_batch_preprocess_without_a_batch_axis_is_never_cached(shapes_dir):
    def per_batch_mean(images, labels):
        return tf.reduce_mean(tf.cast(images, tf.float32)), labels

    _, plan = dataset_from_tfds(
        "memguard_shapes",
        "test[:100]",
        batch_size=50,
        data_dir=shapes_dir,
        batch_preprocess=per_batch_mean,
        with_info=True,
    )
    assert plan.cache == "raw" and plan.preprocessed_bytes is None
    with pytest.raises(ValueError, match=r"`cache`.*no batch axis"):
        dataset_from_tfds(
            "memguard_shapes",
            "test[:100]",
            batch_size=50,
            data_dir=shapes_dir,
            batch_preprocess=per_batch_mean,
            cache="preprocessed",
        )


def test_cifar10_size_config_stores_the_same_images_as_raw_tensors(shapes_dir):
    small = tfds.builder("memguard_shapes", data_dir=shapes_dir)
    big = tfds.builder("memguard_shapes/cifar10_size", data_dir=shapes_dir)
    assert small.builder_config.name == "small"  # the default stays the small one
    assert (big.builder_config.train_examples, big.builder_config.test_examples) == (
        50_000,
        10_000,
    )
    feature = big.info.features["image"]
    assert isinstance(feature, tfds.features.Tensor)
    assert feature.shape == (32, 32, 3) and feature.dtype == np.uint8
    # The first train images equal the small config's (same seed), unencoded.
    generated = big._generate_examples("train", 3)
    rng = np.random.default_rng(2024)
    for index, (key, example) in enumerate(generated):
        assert key == index and example["label"] == index % len(CLASSES)
        np.testing.assert_array_equal(example["image"], draw_shape(rng, index % len(CLASSES)))


@pytest.mark.parametrize(
    "structure",
    [
        lambda image, label: {"image": image, "label": label},
        lambda image, label: (image,),
        lambda image, label: (image, label, tf.ones_like(label)),
    ],
    ids=["dict", "one-tuple", "three-tuple"],
)
def test_preprocessed_cache_gives_the_model_the_same_elements_as_the_raw_one(shapes_dir, structure):
    def batch_preprocess(images, labels):
        return structure(tf.cast(images, tf.float32) / 255.0, labels)

    datasets = [
        dataset_from_tfds(
            "memguard_shapes",
            "test[:100]",
            batch_size=50,
            data_dir=shapes_dir,
            batch_preprocess=batch_preprocess,
            cache=cache,
            seed=0,
        )
        for cache in ("preprocessed", "raw")
    ]
    assert datasets[0].element_spec == datasets[1].element_spec
    first, second = (next(iter(ds)) for ds in datasets)  # test split, seed: same order
    for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(second), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
