"""The buffers of tf.data pipelines (issue #25), each against element size x count.

Needs TensorFlow (tf.data); the guard's fit runs on the TensorFlow backend, where Keras
reads no batch before ``on_train_begin`` (JAX and PyTorch read one to build the loss).
"""

import os
import warnings

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_memguard import MemGuardCallback  # noqa: E402
from keras_memguard.estimate.inputs import input_parts  # noqa: E402
from keras_memguard.estimate.parts import Method  # noqa: E402
from keras_memguard.memory_snapshot import snapshot  # noqa: E402
from keras_memguard.sizes import format_bytes  # noqa: E402

MIB = 2**20
IMAGES = np.zeros((1000, 16, 16, 3), "float32")
LABELS = np.zeros(1000, "int32")
ELEMENT = 16 * 16 * 3 * 4 + 4  # one (image, label)


def slices():
    return tf.data.Dataset.from_tensor_slices((IMAGES, LABELS))


def parts_of(dataset):
    return {part.name: part for part in input_parts(dataset, batch_size=None)}


def test_shuffle_buffer_is_buffer_size_elements_or_the_whole_dataset():
    parts = parts_of(slices().shuffle(300).batch(10))
    assert parts["shuffle buffer"].bytes == 300 * ELEMENT
    assert parts["shuffle buffer"].method is Method.EXACT
    assert parts["batch"].bytes == 10 * ELEMENT
    assert parts["dataset tensors"].bytes == IMAGES.nbytes + LABELS.nbytes
    whole = parts_of(slices().shuffle(50_000))["shuffle buffer"]
    assert whole.bytes == 1000 * ELEMENT and "the whole dataset" in whole.detail


def test_in_memory_cache_holds_every_element_and_a_file_cache_none(tmp_path):
    halves = slices().map(lambda x, y: (tf.cast(x, tf.float16), y))
    assert parts_of(halves.cache())["cache"].bytes == 1000 * (16 * 16 * 3 * 2 + 4)
    on_disk = parts_of(slices().cache(str(tmp_path / "cache")))["cache"]
    assert on_disk.bytes == 0 and "on disk" in on_disk.detail
    forever = parts_of(slices().repeat().cache())["cache"]
    assert forever.bytes is None and "infinite" in forever.detail


def test_prefetch_and_parallel_map_count_their_depth_in_elements():
    dataset = (
        slices()
        .map(lambda x, y: (tf.image.resize(x, (8, 8)), y), num_parallel_calls=3)
        .batch(20)
        .prefetch(7)
    )
    parts = parts_of(dataset)
    small = 8 * 8 * 3 * 4 + 4
    assert parts["parallel map"].bytes == 3 * small
    assert parts["prefetch"].bytes == 7 * 20 * small
    assert parts["prefetch"].method is Method.UPPER_BOUND
    tuned = parts_of(slices().map(lambda x, y: (x, y), num_parallel_calls=tf.data.AUTOTUNE))
    assert tuned["parallel map"].bytes == (os.cpu_count() or 1) * ELEMENT
    autotuned = parts_of(slices().batch(4).prefetch(tf.data.AUTOTUNE))["prefetch"]
    assert autotuned.bytes is None and "AUTOTUNE" in autotuned.detail


def test_a_dimension_known_only_at_run_time_is_unknown_with_the_reason():
    def rows():
        yield np.zeros((3, 2), "float32")

    spec = tf.TensorSpec((None, 2), tf.float32)
    generated = tf.data.Dataset.from_generator(rows, output_signature=spec).shuffle(100)
    part = parts_of(generated)["shuffle buffer"]
    assert part.bytes is None and part.method is Method.UNKNOWN
    assert "known only at run time" in part.detail


@pytest.mark.tensorflow
def test_default_guard_warns_about_a_shuffle_buffer_before_the_first_step():
    element = 2560 * 4 + 4  # 10 KiB images and an int32 label: 12,000 of them = 117 MiB
    dataset = (
        tf.data.Dataset.range(10**6)
        .map(lambda i: (tf.zeros((2560,)), tf.constant(0, tf.int32)))
        .shuffle(12_000)
        .batch(32)
    )
    model = keras.Sequential([keras.Input((2560,)), keras.layers.Dense(2)])
    model.compile("adam", "sparse_categorical_crossentropy")
    guard = MemGuardCallback(max_process_memory=snapshot().process_tree + 64 * MIB)
    seen = []

    class FirstBatch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.extend(str(w.message) for w in caught)
            raise KeyboardInterrupt  # stop before the buffer fills

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KeyboardInterrupt):
            model.fit(dataset, epochs=1, steps_per_epoch=3, callbacks=[guard, FirstBatch()])
    (message,) = [m for m in seen if "this fit needs" in m]
    shuffle = (
        f"(shuffle buffer 12,000 x {format_bytes(element)} = {format_bytes(12_000 * element)})"
    )
    assert message.startswith("keras-memguard: this fit needs at least ")
    assert shuffle in message
    assert "and max_process_memory is" in message
    assert message.endswith(
        "lower the shuffle buffer (shuffle file names, or shuffle after batch) or use "
        "dataset_from_tfds."
    )


@pytest.mark.tensorflow
def test_arrays_on_tensorflow_count_the_copy_tf_data_makes_and_fit_shows_it():
    import psutil

    x = np.ones((16384, 1024), "float32")  # 64 MiB
    y = np.ones(16384, "float32")
    parts = parts_of((x, y))
    assert parts["tf.data copy"].bytes == x.nbytes + y.nbytes
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(x[:64], y[:64], verbose=0)  # TensorFlow's own first-fit memory, out of the way
    process = psutil.Process()
    before, peak = process.memory_info().rss, []

    class Peak(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            peak.append(process.memory_info().rss)

    model.fit(x, y, batch_size=4096, epochs=1, verbose=0, callbacks=[Peak()])
    assert max(peak) - before >= 0.9 * parts["tf.data copy"].bytes
