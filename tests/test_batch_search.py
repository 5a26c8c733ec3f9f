"""The predicting batch-size search against the halving one, with real children and fits.

One step of a small convolutional model (``tests/batch_search_training.py``) under a
host-memory bound: ``max_memory`` (the child's RSS, stopped from the parent), which the
training function also checks against its exact peak RSS at the end. The bound
is set from two measured children (one step at 8 and at the start batch) so that the
start batch does not fit and half of it does,
whatever the backend's own memory: the halving search needs one failing attempt.
The children record which process ran ``build`` and ``train`` (``BATCH_SEARCH_RECORD``):
the predicting search that fits runs both in one child.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import batch_search_training as training
import isolated_tasks as tasks
import keras
import pytest

from keras_memguard import find_batch_size, predict_batch_size, run_isolated
from keras_memguard.isolation.batch_predict import decide, fit_line, largest_batch, sample_sizes
from keras_memguard.isolation.run import shutdown_spares

pytestmark = pytest.mark.backends

START = 512
MIB = 2**20


@pytest.fixture(scope="module")
def bound():
    """A bound under which the largest batch that fits is about 3/4 START."""
    with ThreadPoolExecutor(2) as pool:  # two fresh children: each peak measured alone
        low, high = pool.map(lambda size: run_isolated(training.peak_at, size), (8, START))
    return int(low + (high - low) * (0.75 * START - 8) / (START - 8))


def expected_line():
    """How the line is obtained on this backend, and at which batch sizes.

    TensorFlow without XLA: two small real fits (XLA's figure is only an upper bound
    there); elsewhere the step's estimate at 8 and at the start batch.
    """
    return {
        "tensorflow": ("measured", [8, 64]),
        "jax": ("compiled", [8, START]),
        "torch": ("traced", [8, START]),
    }[keras.backend.backend()]


def recorded(path, **variables):
    """The child's environment: ``build``/``train`` record to ``path``, and ``variables``."""
    return {"BATCH_SEARCH_RECORD": str(path), **variables}


@pytest.fixture(scope="module")
def both_searches(bound, tmp_path_factory):
    """Both searches under ``bound``, and what their children recorded."""
    folder = tmp_path_factory.mktemp("searches")
    train = functools.partial(training.train, limit=bound)
    try:
        halving = find_batch_size(
            train, START, max_memory=bound, keep_warm=True, env=recorded(folder / "halving")
        )
        predicting = find_batch_size(
            train,
            START,
            build=training.build,
            max_memory=bound,
            keep_warm=True,
            env=recorded(folder / "predicting"),
        )
    finally:
        shutdown_spares()
    return bound, halving, predicting, folder


def test_the_halving_search_runs_out_of_memory_first(both_searches):
    _, halving, _, folder = both_searches
    assert halving.how == "searched" and halving.prediction is None
    outcomes = [a.outcome for a in halving.attempts]
    assert outcomes[0] == "out of memory" and outcomes[-1] == "ok"
    assert "passed" in halving.attempts[0].detail or "max_memory" in halving.attempts[0].detail
    # one child per attempt
    runs = training.records(folder / "halving")
    assert [(what, size) for what, _, size in runs] == [
        ("train", a.batch_size) for a in halving.attempts
    ]
    assert len({pid for _, pid, _ in runs}) == len(halving.attempts)


def test_the_predicting_search_that_fits_takes_one_child(both_searches):
    bound, _, predicting, folder = both_searches
    prediction = predicting.prediction
    assert predicting.how == "predicted and confirmed"
    assert [(a.batch_size, a.outcome, a.detail) for a in predicting.attempts] == [
        (prediction.batch_size, "ok", "in the estimate's child")
    ]
    # the estimate (build) and the confirming step (train) ran in one process, once each
    runs = training.records(folder / "predicting")
    assert [(what, size) for what, _, size in runs] == [
        ("build", None),
        ("train", prediction.batch_size),
    ]
    assert len({pid for _, pid, _ in runs}) == 1
    assert prediction.duration_s > 0 and predicting.attempts[0].duration_s > 0
    assert predicting.batch_size == prediction.batch_size
    assert predicting.result > 0  # the step's loss came back
    assert prediction.where == "host" and prediction.bound == bound
    assert prediction.per_sample > 0
    line, sizes = expected_line()
    assert prediction.line == line and [s for s, _ in prediction.sampled] == sizes
    assert f"({line})" in str(prediction)
    assert prediction.peak(predicting.batch_size) < bound


def test_both_searches_agree_within_one_halving_step(both_searches):
    _, halving, predicting, _ = both_searches
    low, high = sorted((halving.batch_size, predicting.batch_size))
    assert high <= 2 * low, (halving.attempts, predicting.prediction)


def test_a_confirmation_stopped_in_the_estimates_child_is_run_again_in_a_fresh_one(bound, tmp_path):
    # The estimate's child holds more than its figures said: its confirmation allocates
    # past max_memory and run_isolated stops it; a fresh child confirms the same size.
    record = tmp_path / "record"
    found = find_batch_size(
        functools.partial(training.train, limit=bound),
        START,
        build=training.build,
        max_memory=bound,
        env=recorded(record, BATCH_SEARCH_BALLAST="estimate"),
        max_attempts=1,  # the estimate's child's attempt is not one of them
    )
    picked = found.prediction.batch_size
    assert found.how == "predicted and confirmed" and found.batch_size == picked
    first, second = found.attempts
    assert (first.batch_size, first.outcome) == (picked, "out of memory")
    assert first.detail.startswith("in the estimate's child: ChildMemoryLimitError")
    assert "max_memory" in first.detail
    assert (second.batch_size, second.outcome, second.detail) == (picked, "ok", "")
    # the figures survived the stopped child
    assert found.prediction.bound == bound and found.prediction.per_sample > 0
    assert [s for s, _ in found.prediction.sampled] == expected_line()[1]
    runs = training.records(record)
    assert [(what, size) for what, _, size in runs] == [
        ("build", None),
        ("train", picked),
        ("train", picked),
    ]
    assert runs[0][1] == runs[1][1] != runs[2][1]


def test_a_prediction_that_does_not_fit_anywhere_falls_back_to_halving(bound, tmp_path):
    # Every process at the predicted size runs out of memory: the estimate's child, then
    # a fresh one at the same size; halving goes on from half of it.
    record = tmp_path / "record"
    found = find_batch_size(
        functools.partial(training.train, limit=bound),
        START,
        build=training.build,
        max_memory=bound,
        env=recorded(record, BATCH_SEARCH_BALLAST="predicted"),
    )
    picked = found.prediction.batch_size
    assert found.how == "searched" and found.prediction.per_sample > 0
    assert [(a.batch_size, a.outcome) for a in found.attempts] == [
        (picked, "out of memory"),
        (picked, "out of memory"),
        (picked // 2, "ok"),
    ]
    assert found.attempts[0].detail.startswith("in the estimate's child")
    # stopped at max_memory both times (not some other memory error of the test's own)
    assert all("ChildMemoryLimitError" in a.detail for a in found.attempts[:2])
    assert len({pid for _, pid, _ in training.records(record)}) == 3


def test_without_train_fn_the_estimates_model_takes_the_step(bound, tmp_path):
    record = tmp_path / "record"
    found = find_batch_size(
        None, START, build=training.build, max_memory=bound, env=recorded(record)
    )
    assert found.how == "predicted and confirmed"
    assert [(a.batch_size, a.outcome, a.detail) for a in found.attempts] == [
        (found.prediction.batch_size, "ok", "in the estimate's child")
    ]
    assert found.result > 0  # the step's loss
    assert [what for what, _, _ in training.records(record)] == ["build"]  # built once


def test_another_error_in_the_estimates_child_is_judged_in_a_fresh_one(bound, tmp_path):
    # Only the estimate's child fails: the fresh child's confirmation is the search's.
    train = functools.partial(training.train, limit=bound)
    record = tmp_path / "record"
    environment = recorded(record, BATCH_SEARCH_FAIL="estimate")
    found = find_batch_size(train, START, build=training.build, max_memory=bound, env=environment)
    picked = found.prediction.batch_size
    assert found.how == "predicted and confirmed" and found.batch_size == picked
    assert [(a.batch_size, a.outcome) for a in found.attempts] == [
        (picked, "failed"),
        (picked, "ok"),
    ]
    assert "RuntimeError: train failed" in found.attempts[0].detail
    # An error of the training function's own is raised, as without a prediction.
    environment = recorded(tmp_path / "always", BATCH_SEARCH_FAIL="always")
    with pytest.raises(RuntimeError, match=r"train failed at batch \d+ \(always\)"):
        find_batch_size(train, START, build=training.build, max_memory=bound, env=environment)


def test_a_confirmation_that_exits_the_estimates_child_keeps_the_prediction(bound, tmp_path):
    # train_fn ends its process with sys.exit(0) (as a script's last line may): the
    # child returns nothing, the figures come back from the file it wrote first.
    train = functools.partial(training.train, limit=bound)
    environment = recorded(tmp_path / "record", BATCH_SEARCH_FAIL="exit")
    found = find_batch_size(train, START, build=training.build, max_memory=bound, env=environment)
    assert found.how == "predicted and confirmed" and found.result is None
    assert found.prediction.per_sample > 0 and found.batch_size == found.prediction.batch_size
    assert [a.outcome for a in found.attempts] == ["ok"]


def test_predict_batch_size_only_predicts(bound, tmp_path):
    record = tmp_path / "record"
    prediction = predict_batch_size(training.build, START, max_memory=bound, env=recorded(record))
    assert prediction.batch_size is not None and prediction.peak(prediction.batch_size) < bound
    assert [what for what, _, _ in training.records(record)] == ["build"]


def test_an_unknown_estimate_falls_back_to_halving():
    # The model reads a value out of its step: neither XLA nor a fake-tensor trace can
    # follow it, so the estimate is unknown; attempts then halve (an OOM above 32).
    train = functools.partial(tasks.fail_above, limit=32)
    found = find_batch_size(train, 64, build=training.build_untraceable, timeout=300)
    assert found.how == "searched"
    assert found.prediction is not None and found.prediction.batch_size is None
    assert "step's temporaries" in found.prediction.reason
    assert [(a.batch_size, a.outcome) for a in found.attempts] == [
        (64, "out of memory"),
        (32, "ok"),
    ]


def test_a_measured_line_is_read_at_its_own_batch_sizes():
    # Two small real fits (at 8 and 64) instead of the estimate at 8 and 512: 1 MiB a
    # sample measured, 40 MiB built and 10 MiB added at batch 8.
    figures = {
        "unknown": "",
        "where": "host",
        "line": "measured",
        "sizes": [8, 64],
        "added": [10 * MIB, 66 * MIB],
        "device": [0, 0],
        "built": 40 * MIB,
        "measured": 10 * MIB,
    }
    prediction = decide(figures, (8, 512), 200 * MIB, None, 0.25, 1, 512)
    assert prediction.per_sample == pytest.approx(MIB)
    assert prediction.fixed == pytest.approx(42 * MIB)  # 40 + 10 - 8 * 1
    assert prediction.sampled == ((8, 50 * MIB), (64, 106 * MIB))
    assert prediction.batch_size == int(0.75 * (200 - 42))  # 118
    assert prediction.line == "measured"


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the line is measured only where the estimate is an upper bound: TF without XLA",
)
@pytest.mark.parametrize("case", ["no room under the bound", "too few samples"])
def test_without_room_for_the_second_fit_the_line_is_the_estimates(case):
    # A second real fit at 64 that the bound cannot hold would stop the child and lose
    # every figure; one over fewer samples than 64 x steps would read a low slope.
    import numpy as np

    from keras_memguard.isolation.batch_measure import measure_figures
    from keras_memguard.isolation.calibrate import unpack_build

    model, data, _ = unpack_build(training.build())
    if case == "too few samples":
        data = (np.zeros((20, *training.SHAPE), "float32"), np.zeros((20,), "int32"))
    bound = 1 if case == "no room under the bound" else None
    figures = measure_figures(model, data, (8, 512), host_bound=bound)
    assert figures["unknown"] == "" and figures["line"] == "upper bound"
    assert figures["sizes"] == [8, 512]


def test_the_line_and_the_pick():
    assert fit_line(((8, 800), (16, 1600), (32, 3200))) == pytest.approx((0.0, 100.0))
    # room 900 above the fixed 100, 20% kept free: 720 for the batch at 10 a sample
    assert largest_batch(100.0, 10.0, 1000.0, 0.2, 1, 512) == 72
    assert largest_batch(100.0, 10.0, 1000.0, 0.2, 1, 50) == 50
    assert largest_batch(100.0, 10.0, 1000.0, 0.2, 80, 512) is None
    assert largest_batch(100.0, 10.0, 50.0, 0.0, 1, 512) is None
    assert sample_sizes(512) == (8, 512) and sample_sizes(1) == (1, 2)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"safety_margin": 1.0}, "safety_margin"),
        ({"safety_margin": "10%"}, "safety_margin"),
        ({"build": "model.py"}, "build"),
        ({"max_memory": "lots"}, "max_memory"),
        ({"device_memory": -1}, "device_memory"),
        ({"timeout": "600"}, "timeout"),
        ({"timeout": True}, "timeout"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        predict_batch_size(**{"build": training.build, "batch_size": 64, **kwargs})
    with pytest.raises(ValueError, match=f"`{name}`"):
        find_batch_size(tasks.add, **{"batch_size": 64, **kwargs})


def test_train_fn_or_build_is_needed():
    with pytest.raises(ValueError, match="`train_fn`"):
        find_batch_size(None, 64)


def test_the_small_fit_makes_zeros_of_shape_pairs():
    # ((batch_shape, dtype), ...) pairs were taken apart as a structure: no small fit ran
    from keras_memguard.isolation.calibrate import small_fit_args

    x, y = small_fit_args((((None, 4, 4, 3), "float32"), ((None,), "int32")), 8, 2)
    assert (x.shape, str(x.dtype), y.shape, str(y.dtype)) == (
        (16, 4, 4, 3),
        "float32",
        (16,),
        "int32",
    )
