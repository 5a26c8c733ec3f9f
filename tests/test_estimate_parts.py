"""The cheap parts of an estimate (issue #25): model parts, inputs, and the guard's pre-flight.

Runs on every backend (no TensorFlow needed); tf.data pipelines are in
test_estimate_tf_data.py, a torch DataLoader runs where torch is installed.
"""

import warnings

import keras
import numpy as np
import pytest
from training import read_scalars, tiny_data, tiny_model

from keras_memguard import MemGuardCallback
from keras_memguard.errors import MemGuardWarning
from keras_memguard.estimate.inputs import input_parts
from keras_memguard.estimate.parts import EstimatePart, Method
from keras_memguard.estimate.static import has_convolution, model_parts, optimizer_slots
from keras_memguard.guard import preflight
from keras_memguard.guard.callback import memory_layout
from keras_memguard.guard.policy import Bounds
from keras_memguard.memory_snapshot import GpuSnapshot, MemorySnapshot, snapshot
from keras_memguard.sizes import format_bytes, parse_size

pytestmark = pytest.mark.backends
MIB = 2**20


def real_bytes(variables):
    return sum(v.numpy().nbytes for v in variables)


def by_name(parts):
    return {part.name: part for part in parts}


def conv_model(optimizer):
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


@pytest.mark.parametrize(
    "optimizer",
    [
        keras.optimizers.Adam(),
        keras.optimizers.Adam(amsgrad=True),
        keras.optimizers.AdamW(),
        keras.optimizers.SGD(),
        keras.optimizers.SGD(momentum=0.9),
        keras.optimizers.RMSprop(momentum=0.5, centered=True),
        keras.optimizers.Adagrad(),
        keras.optimizers.Lion(),
    ],
    ids=lambda o: f"{type(o).__name__}-{optimizer_slots(o)[0]}",
)
def test_model_parts_match_the_real_variables_before_and_after_the_optimizer_is_built(optimizer):
    model = conv_model(optimizer)
    before = by_name(model_parts(model))
    assert before["variables"].bytes == real_bytes(model.weights)
    assert before["gradients"].bytes == real_bytes(model.trainable_weights)
    assert before["optimizer state"].method is Method.EXACT
    assert "predicted" in before["optimizer state"].detail
    model.optimizer.build(model.trainable_variables)
    after = by_name(model_parts(model))
    built = real_bytes(model.optimizer.variables)
    assert after["optimizer state"].bytes == built
    # The prediction counts the slots only; the built optimizer adds its scalars
    # (iterations, learning rate: a few bytes each).
    assert 0 <= built - before["optimizer state"].bytes <= 64
    assert before["variables"].bytes > 0 and after["variables"] == before["variables"]


def test_an_unknown_optimizer_and_an_unbuilt_model_are_unknown_with_a_reason():
    class Custom(keras.optimizers.Optimizer):
        def update_step(self, gradient, variable, learning_rate):
            variable.assign_sub(gradient * learning_rate)

    model = conv_model(Custom(learning_rate=0.1))
    part = by_name(model_parts(model))["optimizer state"]
    assert part.bytes is None and part.method is Method.UNKNOWN
    assert "Custom is not one of the optimizers" in part.detail
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    parts = model_parts(unbuilt)
    assert all(p.bytes is None and "not built" in p.detail for p in parts[:3])
    assert by_name(parts)["runtime overhead"].method is Method.UNKNOWN


def test_a_convolutional_model_counts_the_runtime_measured_with_a_convolution():
    from keras_memguard.backends.step import first_fit_runtime

    dense = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    inputs = keras.Input((16, 16, 3))
    nested = keras.Model(inputs, conv_model("adam")(inputs))  # the convolution one level down
    assert has_convolution(nested) and not has_convolution(dense)
    plain, with_convolution = first_fit_runtime(), first_fit_runtime(convolution=True)
    assert plain is not None and with_convolution is not None
    overhead = by_name(model_parts(nested))["runtime overhead"]
    assert overhead.bytes == with_convolution[0]
    assert by_name(model_parts(dense))["runtime overhead"].bytes == plain[0]
    # PyTorch has a figure of its own for it (its convolution kernels page in more code)
    kind = "convolutional model" if with_convolution != plain else "model"
    assert f"for a tiny {kind} (not this one)" in overhead.detail


def test_array_parts_count_keras_floatx_copy_and_one_batch():
    x = np.zeros((1000, 20), "float64")  # Keras casts float64 to float32: a whole copy
    y = np.zeros((1000,), "int32")
    parts = by_name(input_parts((x, y), batch_size=64))
    assert parts["input arrays"].bytes == x.nbytes + y.nbytes
    assert parts["floatx copy"].bytes == x.size * 4
    assert parts["input batch"].bytes == 64 * (20 * 4 + 4)
    same = by_name(input_parts((x.astype("float32"), y), batch_size=None))
    assert "floatx copy" not in same and same["input batch"].bytes == 32 * (20 * 4 + 4)


class Batches(keras.utils.PyDataset):
    def __init__(self, batch_shape, **kwargs):
        super().__init__(**kwargs)
        self.batch_shape = batch_shape

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return np.zeros(self.batch_shape, "float32"), np.zeros(self.batch_shape[0], "int32")


def test_pydataset_queue_is_max_queue_size_batches():
    batch = 32 * 100 * 4 + 32 * 4
    threads = by_name(input_parts(Batches((32, 100), workers=3, max_queue_size=7), batch_size=None))
    assert threads["pydataset queue"].bytes == 7 * batch
    assert threads["pydataset queue"].method is Method.UPPER_BOUND
    processes = Batches((32, 100), workers=2, use_multiprocessing=True, max_queue_size=5)
    assert by_name(input_parts(processes, batch_size=None))["pydataset queue"].bytes == 7 * batch
    single = by_name(input_parts(Batches((32, 100)), batch_size=None))
    assert single["pydataset queue"].bytes == 0 and single["input batch"].bytes == batch


def test_an_unsupported_input_is_unknown_with_a_reason():
    (part,) = input_parts(iter([1, 2, 3]), batch_size=None)
    assert part.bytes is None and part.method is Method.UNKNOWN
    assert "list_iterator is not an input whose buffers can be read" in part.detail
    (none,) = input_parts(None, batch_size=None)
    assert none.method is Method.UNKNOWN and none.detail == "no input was given"


def test_torch_dataloader_holds_workers_x_prefetch_factor_batches():
    torch = pytest.importorskip("torch")
    data = torch.utils.data.TensorDataset(
        torch.zeros(100, 3, 8, 8), torch.zeros(100, dtype=torch.int64)
    )
    sample = 3 * 8 * 8 * 4 + 8
    loader = torch.utils.data.DataLoader(data, batch_size=16, num_workers=3, prefetch_factor=4)
    parts = by_name(input_parts(loader, batch_size=None))
    assert parts["loader queue"].bytes == 3 * 4 * 16 * sample
    assert parts["input batch"].bytes == 16 * sample
    inline = by_name(input_parts(torch.utils.data.DataLoader(data, batch_size=8), batch_size=None))
    assert inline["loader queue"].bytes == 0


# ----------------------------------------------------------------- the decision
def snap(**fields):
    base = {"timestamp": 0.0, "process_tree": 900 * MIB, "system_total": 64 * 2**30}
    return MemorySnapshot(**{**base, **fields})


def test_preflight_message_names_the_largest_part_the_room_and_the_fix():
    model = tiny_model()
    shuffle = EstimatePart(
        "shuffle buffer", 12_000 * 602_112, Method.EXACT, "12,000 x 588.0 KiB", "input"
    )
    parts = (*model_parts(model), shuffle)
    container = snap(
        system_available=40 * 2**30,
        container_limit=8 * 2**30,
        container_working_set=int(5.1 * 2**30),
    )
    message = preflight.preflight_message(
        parts, container, Bounds(), preflight.resident_parts(model)
    )
    assert message is not None
    # the runtime's first-fit memory is counted as held (a later fit has it already);
    # the step is not counted by the cheap pre-flight: "at least"
    assert by_name(parts)["runtime overhead"].method is Method.MEASURED
    need = format_bytes(shuffle.bytes + by_name(parts)["gradients"].bytes)
    assert message.startswith(f"keras-memguard: this fit needs at least {need} more than it holds")
    assert "(shuffle buffer 12,000 x 588.0 KiB = 6.7 GiB)" in message
    assert "only 2.9 GiB are available in this container" in message
    assert message.endswith("or use dataset_from_tfds.")
    roomy = snap(system_available=40 * 2**30)
    assert preflight.preflight_message(parts, roomy, Bounds(), set()) is None
    bound = Bounds(max_process_memory=parse_size("7GiB", name="max_process_memory"))
    capped = preflight.preflight_message(parts, roomy, bound, set())
    assert capped is not None and "max_process_memory is 7.0 GiB" in capped
    # A bound the process has crossed already is the guard's checks' to report.
    crossed = Bounds(max_process_memory=parse_size("800MiB", name="max_process_memory"))
    assert preflight.preflight_message(parts, roomy, crossed, set()) is None


def test_resident_parts_are_not_memory_still_to_come():
    arrays = input_parts(np.zeros((2**18, 64), "float32"), batch_size=32)  # 64 MiB, in memory
    # (on TensorFlow a "tf.data copy" part comes too: test_estimate_tf_data.py)
    parts = [part for part in arrays if part.name in ("input arrays", "input batch")]
    tight = snap(system_available=40 * MIB)
    assert preflight.preflight_message(parts, tight, Bounds(), {"input arrays"}) is None
    assert preflight.predicted_peak(parts, tight, {"input arrays"}) == 900 * MIB + 32 * 256


def test_device_parts_are_checked_against_the_gpu_bound_and_what_its_allocator_holds():
    gradients = EstimatePart("gradients", 6 * 2**30, Method.EXACT, "one per weight", where="device")
    slots = EstimatePart("optimizer state", 12 * 2**30, Method.EXACT, "2 slots", where="device")
    # JAX has reserved 75% of the GPU (NVML's figure); its arrays hold 2 GiB.
    gpu = GpuSnapshot(index=0, total=16 * 2**30, device_used=12 * 2**30, allocated=2 * 2**30)
    roomy = snap(system_available=40 * 2**30, gpus=(gpu,))
    message = preflight.preflight_message([gradients, slots], roomy, Bounds(), set())
    assert message == (
        "keras-memguard: this fit needs at least 18.0 GiB more GPU memory than it holds now "
        "(optimizer state: 12.0 GiB); GPU 0 holds 2.0 GiB already, and its total is "
        "16.0 GiB; use an optimizer with fewer slots (SGD keeps 0-1 per weight, Adam 2)."
    )
    assert preflight.preflight_message([gradients], roomy, Bounds(), set()) is None
    capped = Bounds(max_gpu_memory=parse_size("7GiB", name="max_gpu_memory"))
    assert "max_gpu_memory is 7.0 GiB" in preflight.preflight_message(
        [gradients], roomy, capped, set()
    )


def test_full_preflight_asks_estimate_fit_memory_once_per_model_and_input(monkeypatch):
    from keras_memguard import estimate as stage
    from keras_memguard.estimate.parts import MemoryEstimate

    asked = []

    def estimate_fit_memory(model, x, *, y=None, batch_size=None):
        asked.append((x.shape, y.shape, batch_size))
        step = EstimatePart("step temporaries", 3 * MIB, Method.COMPILED, "batch 16")
        return MemoryEstimate(parts=(*model_parts(model), step), batch_size=batch_size)

    monkeypatch.setattr(stage, "estimate_fit_memory", estimate_fit_memory, raising=False)
    x, y = tiny_data(samples=64)
    model = tiny_model()
    guard = MemGuardCallback(preflight="full")
    for _ in range(2):
        model.fit(x, y, batch_size=16, epochs=1, callbacks=[guard], verbose=0)
    assert asked == [((64, 8), (64,), 16)]
    assert guard.estimate.part("step temporaries").bytes == 3 * MIB

    def broken(model, x, *, y=None, batch_size=None):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(stage, "estimate_fit_memory", broken)
    with pytest.warns(MemGuardWarning, match="full pre-flight failed.*no compiler here"):
        tiny_model().fit(x, y, batch_size=16, epochs=1, callbacks=[guard], verbose=0)
    assert guard.estimate.part("step temporaries") is None
    assert guard.estimate.part("input batch").bytes == 16 * (8 * 4 + 4)


# ------------------------------------------------------------------ in a real fit
class StopBeforeTheFirstStep(Exception):
    pass


class FirstBatch(keras.callbacks.Callback):
    """Records the warnings seen when the first batch is about to run, then stops."""

    def __init__(self, caught):
        super().__init__()
        self.caught, self.seen = caught, None

    def on_train_batch_begin(self, batch, logs=None):
        self.seen = [str(w.message) for w in self.caught]
        raise StopBeforeTheFirstStep


def test_default_guard_warns_before_the_first_step_when_a_pydataset_queue_cannot_fit():
    batch_shape = (256, 64, 64)  # 4 MiB batches, 20 of them queued: 80 MiB to come
    data = Batches(batch_shape, workers=2, max_queue_size=20)
    model = keras.Sequential(
        [keras.Input(batch_shape[1:]), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    model.compile("sgd", "sparse_categorical_crossentropy")
    bound = snapshot().process_tree + 48 * MIB
    guard = MemGuardCallback(max_process_memory=bound)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = FirstBatch(caught)
        with pytest.raises(StopBeforeTheFirstStep):
            model.fit(data, epochs=1, callbacks=[guard, first], verbose=0)
    batch = 256 * 64 * 64 * 4 + 256 * 4
    expected = f"(pydataset queue: {format_bytes(20 * batch)})"
    seen = [m for m in first.seen if "this fit needs" in m]
    assert len(seen) == 1, first.seen
    assert expected in seen[0] and "max_process_memory" in seen[0]
    assert seen[0].endswith("lower the PyDataset's max_queue_size or workers.")
    assert guard.estimate.part("pydataset queue").bytes == 20 * batch


def test_preflight_runs_once_per_model_and_input_signature(monkeypatch):
    calls = []
    counted = preflight.input_estimate.input_parts

    def counting(x, *, batch_size):
        calls.append(batch_size)
        return counted(x, batch_size=batch_size)

    monkeypatch.setattr(preflight.input_estimate, "input_parts", counting)
    x, y = tiny_data(samples=64)
    model = tiny_model()
    guard = MemGuardCallback()
    for _ in range(3):
        model.fit(x, y, batch_size=16, epochs=1, callbacks=[guard], verbose=0)
    assert calls == [16]
    model.fit(x[:32], y[:32], batch_size=16, epochs=1, callbacks=[guard], verbose=0)
    assert calls == [16, 16]  # another shape: another signature
    off = MemGuardCallback(preflight=False)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[off], verbose=0)
    assert calls == [16, 16] and off.estimate is None


def test_predicted_peak_is_charted_beside_the_measured_peak(tmp_path):
    x, y = tiny_data(samples=256)
    guard = MemGuardCallback(log_dir=str(tmp_path))
    tiny_model().fit(x, y, batch_size=32, epochs=2, callbacks=[guard], verbose=0)
    scalars = read_scalars(str(tmp_path / "memory"))
    predicted = [value for _, value in scalars["memory/predicted_peak_mib"]]
    measured = [value for _, value in scalars["memory/process_tree_peak_mib"]]
    assert len(predicted) == 2 and predicted[0] == predicted[1]
    # A tiny model adds little to the process: the prediction is its size at train
    # begin plus a few KiB, well within the measured peak's range.
    assert 0.5 * max(measured) < predicted[0] <= 1.01 * max(measured)
    charts = [c for cat in memory_layout([]).category for c in cat.chart]
    chart = next(c for c in charts if c.title.startswith("Predicted peak"))
    assert "predicted_peak_mib" in chart.multiline.tag[0]
    assert "process_tree_peak_mib" in chart.multiline.tag[0]


def test_preflight_argument_is_checked():
    with pytest.raises(ValueError, match=r"`preflight`\. Received: preflight='fast'"):
        MemGuardCallback(preflight="fast")
    with pytest.raises(ValueError, match=r"'cheap' \(the default\), 'full' or False"):
        MemGuardCallback(preflight=0)
    assert MemGuardCallback(preflight=False).preflight is False
