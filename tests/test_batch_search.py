"""The predicting batch-size search against the halving one, with real children and fits.

One step of a small convolutional model (``tests/batch_search_training.py``) under a
host-memory bound: ``max_memory`` (the child's RSS, stopped from the parent), which the
training function also checks against its exact peak RSS at the end. The bound
is set from two measured children (one step at 8 and at the start batch) so that the
start batch does not fit and half of it does,
whatever the backend's own memory: the halving search needs one failing attempt.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import batch_search_training as training
import isolated_tasks as tasks
import pytest

from keras_memguard import find_batch_size, predict_batch_size, run_isolated
from keras_memguard.isolation.batch_predict import fit_line, largest_batch, sample_sizes
from keras_memguard.isolation.run import shutdown_spares

pytestmark = pytest.mark.backends

START = 512
MIB = 2**20


@pytest.fixture(scope="module")
def both_searches():
    """Both searches under one bound where the largest batch that fits is about 3/4 START."""
    with ThreadPoolExecutor(2) as pool:  # two fresh children: each peak measured alone
        low, high = pool.map(lambda size: run_isolated(training.peak_at, size), (8, START))
    bound = int(low + (high - low) * (0.75 * START - 8) / (START - 8))
    train = functools.partial(training.train, limit=bound)
    try:
        halving = find_batch_size(train, START, max_memory=bound, keep_warm=True)
        predicting = find_batch_size(
            train, START, build=training.build, max_memory=bound, keep_warm=True
        )
    finally:
        shutdown_spares()
    return bound, halving, predicting


def test_the_halving_search_runs_out_of_memory_first(both_searches):
    _, halving, _ = both_searches
    assert halving.how == "searched" and halving.prediction is None
    outcomes = [a.outcome for a in halving.attempts]
    assert outcomes[0] == "out of memory" and outcomes[-1] == "ok"
    assert "passed" in halving.attempts[0].detail or "max_memory" in halving.attempts[0].detail


def test_the_predicting_search_runs_one_attempt_that_fits(both_searches):
    bound, _, predicting = both_searches
    prediction = predicting.prediction
    assert predicting.how == "predicted and confirmed"
    assert [(a.batch_size, a.outcome) for a in predicting.attempts] == [
        (prediction.batch_size, "ok")
    ]
    assert predicting.batch_size == prediction.batch_size
    assert predicting.result > 0  # the step's loss came back
    assert prediction.where == "host" and prediction.bound == bound
    assert prediction.per_sample > 0 and [s for s, _ in prediction.sampled] == [8, START]
    assert prediction.peak(predicting.batch_size) < bound


def test_both_searches_agree_within_one_halving_step(both_searches):
    _, halving, predicting = both_searches
    low, high = sorted((halving.batch_size, predicting.batch_size))
    assert high <= 2 * low, (halving.attempts, predicting.prediction)


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
