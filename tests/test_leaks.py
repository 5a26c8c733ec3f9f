"""Issue #16: the guard says *where* memory leaks: the user's own file:line.

The subprocess tests run real ``fit()`` calls (tests/leak_sites_training.py) on the backend
named by ``KERAS_BACKEND`` (TensorFlow when unset); they carry the ``backends`` marker, so
CI runs them once per backend:
``KERAS_BACKEND=jax /work/venvs/jax/bin/python -m pytest -m backends tests/test_leaks.py``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import tracemalloc

import numpy as np
import pytest
from training import marked_site, run_scenario

from keras_memguard.cli.main import main as memguard
from keras_memguard.cli.report import load_report
from keras_memguard.guard.leaks import (
    LeakTracer,
    is_library_file,
    object_traceback,
    user_frame,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "leak_sites_training.py")
MIB = 2**20


def _site(name: str) -> str:
    return marked_site("leak_sites_training.py", name)


def _train(scenario: str, workdir) -> dict:
    return run_scenario("leak_sites_training.py", scenario, workdir)


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """One 7-epoch fit with three leaks: NumPy arrays, keras.ops results, whole models."""
    workdir = tmp_path_factory.mktemp("leaks")
    return workdir, _train("leaks", workdir)


@pytest.mark.backends
@pytest.mark.slow
def test_each_leak_is_named_at_its_line_with_its_growth(leaky):
    _, result = leaky
    sites = {s["location"]: s for s in result["sites"]}
    numpy_site, ops_site, model_site = _site("numpy"), _site("ops"), _site("model")
    assert [s["location"] for s in result["sites"]] == [numpy_site, ops_site, model_site]
    assert all(s["in_user_code"] for s in result["sites"])
    # the growth measured is what each line keeps: 4 MiB, 2 MiB and 1.5 MiB of weights
    numpy_leak, ops_leak, model_leak = sites[numpy_site], sites[ops_site], sites[model_site]
    assert numpy_leak["function"] == "NumpyHoarder.on_train_batch_end"
    assert numpy_leak["bytes_per_epoch"] == pytest.approx(4 * MIB, rel=0.05)
    assert "NumPy buffer +4/epoch" in numpy_leak["what"]
    assert ops_leak["function"] == "TensorHoarder.on_train_batch_end"
    assert ops_leak["bytes_per_epoch"] == pytest.approx(2 * MIB, rel=0.1)
    assert ops_leak["tensor_bytes_per_epoch"] == 2 * MIB
    assert re.search(r"float32\[128,1024\] on \S+ \+4/epoch", ops_leak["what"][0])
    assert model_leak["function"] == "build_model"
    assert model_leak["tensor_bytes_per_epoch"] == (256 * 512 + 512 * 512 + 2 * 512) * 4
    assert re.search(r"float32\[512,512\] on \S+ \+1/epoch", model_leak["what"][0])
    assert any("keras.Sequential +1/epoch" in w for w in model_leak["what"])
    # the full traceback reaches from the script's fit() call down to the site
    file, line = numpy_site.rsplit(":", 1)
    assert f'  File "{file}", line {line}' in numpy_leak["traceback"]
    assert any("model.fit(" in line for line in numpy_leak["traceback"])


@pytest.mark.backends
@pytest.mark.slow
def test_the_growth_warning_names_the_top_site_and_the_summary_lists_all(leaky):
    _, result = leaky
    # auto mode: tracing starts when growth is first suspected (3 epochs after the
    # warm-up at the earliest), samples 2 more epochs, and stops
    first = result["traced_epochs"][0]
    assert first >= 3 and result["traced_epochs"] == [first, first + 1, first + 2]
    (warning,) = result["warnings"]
    assert "process memory grows by" in warning
    assert f"Most of it is allocated at {_site('numpy')} in NumpyHoarder" in warning
    summary = result["summary"]
    for name in ("numpy", "ops", "model"):
        assert _site(name) in summary
    assert summary in result["stderr"]  # verbose=1 prints it at train end


@pytest.mark.backends
@pytest.mark.slow
def test_tensorboard_and_memguard_report_show_the_sites(leaky, capsys):
    workdir, _ = leaky
    (run,) = [r for r in load_report(os.path.join(workdir, "logs")) if r.name == "memory"]
    assert [line.split(" in ")[0] for line in run.leak_sites] == [
        _site("numpy"),
        _site("ops"),
        _site("model"),
    ]
    assert memguard(["report", os.path.join(workdir, "logs")]) == 0
    printed = capsys.readouterr().out
    assert "leak sites (growth per epoch):" in printed
    assert f"{_site('ops')} in TensorHoarder.on_train_batch_end: +2.0 MiB/epoch" in printed
    assert memguard(["report", os.path.join(workdir, "logs"), "--json"]) == 0
    (data,) = [r for r in json.loads(capsys.readouterr().out) if r["run"] == "memory"]
    assert data["leak_sites"] == run.leak_sites


@pytest.mark.backends
@pytest.mark.slow
def test_a_healthy_run_reports_no_site_and_is_not_traced_unless_asked(tmp_path):
    result = _train("healthy", tmp_path)
    auto, traced = result["auto"], result["traced"]
    assert auto["traced_epochs"] == []  # no growth, no tracing: no cost
    assert traced["traced_epochs"] == [1, 2, 3]  # trace_leaks=True traced after warm-up ...
    for run in (auto, traced):
        assert run["sites"] == []  # ... and found nothing to blame
        assert run["warnings"] == []
        assert "leak sites" not in run["summary"]
    (report,) = [r for r in load_report(os.path.join(tmp_path, "logs")) if r.name == "memory"]
    assert report.leak_sites == []


# ------------------------------------------------------------------ in-process units
def test_library_frames_are_told_from_user_frames():
    import keras

    assert is_library_file(keras.__file__)
    assert is_library_file(np.__file__)
    assert is_library_file(json.__file__)  # the standard library
    assert is_library_file(tracemalloc.__file__)
    assert not is_library_file(__file__)
    assert not is_library_file(SCRIPT)
    frames = [tracemalloc.Frame((SCRIPT, 3)), tracemalloc.Frame((keras.__file__, 9))]
    assert user_frame(frames) == (frames[0], True)
    assert user_frame(frames[1:]) == (frames[1], False)


def test_the_guards_own_allocations_are_skipped_but_code_it_runs_is_not():
    import keras

    import keras_memguard.guard.leaks as leaks
    from keras_memguard.isolation import run

    guard, user, lib = (leaks.__file__, 10), (SCRIPT, 31), (keras.__file__, 5)
    # raw tracebacks run from the most recent frame, as tracemalloc stores them
    assert leaks._raw_site((guard, lib, user)) is None  # the guard sampling, under fit()
    assert leaks._raw_site((lib, user, (run.__file__, 99))) == (user, True)  # run_isolated
    assert leaks._raw_site((lib, lib)) == (lib, False)


class _Plain:  # instances keep their __dict__ before the object on CPython 3.11
    pass


def test_object_traceback_finds_where_an_instance_was_made():
    started = not tracemalloc.is_tracing()
    tracemalloc.start(4)
    try:
        obj = _Plain()
        line = sys._getframe().f_lineno - 1
        traceback = object_traceback(obj)
    finally:
        if started:
            tracemalloc.stop()
    assert traceback is not None
    assert (traceback[-1].filename, traceback[-1].lineno) == (__file__, line)


def _epochs(tracer, epochs, work):
    """Runs ``work(epoch)`` then the tracer's epoch end; returns the reports."""
    reports = []
    for epoch in range(epochs):
        work(epoch)
        report = tracer.epoch_end(epoch, suspected=False)
        if report is not None:
            reports.append(report)
    return reports


def test_a_leak_is_reported_then_tracing_stops():
    assert not tracemalloc.is_tracing()
    tracer = LeakTracer(True, warmup_epochs=1)
    held = []
    tracing = []

    def work(epoch):
        held.append(np.ones(2**17))  # 1 MiB per epoch
        tracing.append(tracemalloc.is_tracing())

    (report,) = _epochs(tracer, 6, work)
    line = work.__code__.co_firstlineno + 1
    (site,) = report.sites
    assert (site.filename, site.lineno, site.function) == (__file__, line, work.__qualname__)
    assert site.bytes_per_epoch == pytest.approx(MIB, rel=0.01)
    assert (report.first_epoch, report.last_epoch) == (1, 3)
    assert tracing == [False, False, True, True, False, False]
    assert tracer.traced_epochs == [1, 2, 3]


def test_one_off_warm_up_growth_and_steady_state_are_not_blamed():
    tracer = LeakTracer(True, warmup_epochs=1)
    cache, scratch = [], []

    def work(epoch):
        if epoch == 2:
            cache.append(np.ones(2**20))  # a compilation-cache-like one-off: 8 MiB once
        scratch[:] = [np.ones(2**17)]  # replaced each epoch: steady

    (report,) = _epochs(tracer, 5, work)
    assert report.sites == ()
    assert not tracemalloc.is_tracing()


def test_auto_mode_traces_only_when_growth_is_suspected():
    tracer = LeakTracer(None)
    for epoch in range(4):
        assert tracer.epoch_end(epoch, suspected=False) is None
    assert not tracemalloc.is_tracing() and tracer.traced_epochs == []
    assert tracer.epoch_end(4, suspected=True) is None
    assert tracemalloc.is_tracing() and tracer.tracing
    assert "Locating the allocation sites" in tracer.warning_suffix()
    tracer.close()
    assert not tracemalloc.is_tracing()
    assert LeakTracer(False).epoch_end(5, suspected=True) is None
    assert not tracemalloc.is_tracing()


def test_a_users_own_tracemalloc_is_left_running():
    tracemalloc.start(8)
    try:
        tracer = LeakTracer(True, warmup_epochs=0)
        _epochs(tracer, 3, lambda epoch: None)
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_trace_leaks_rejects_other_values():
    from keras_memguard import MemGuardCallback

    with pytest.raises(ValueError, match="trace_leaks"):
        MemGuardCallback(trace_leaks="yes")


# ----------------------------------------------------------------------- real GPUs
def _gpu_arrays():
    """For each framework here that sees a GPU, a C callable making 1 MiB there."""
    makers = []
    try:
        import torch

        if torch.cuda.is_available():
            makers.append(("torch", functools.partial(torch.ones, 256, 1024, device="cuda")))
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp

        if any(d.platform == "gpu" for d in jax.devices()):
            makers.append(("jax", functools.partial(jnp.ones, (256, 1024))))
    except (ImportError, RuntimeError):
        pass
    return makers


@pytest.mark.gpu
def test_growing_gpu_tensors_are_named_with_their_device_and_bytes():
    makers = _gpu_arrays()
    if not makers:
        pytest.skip("needs PyTorch or JAX with a GPU")
    for name, make in makers:
        tracer = LeakTracer(True, warmup_epochs=0)
        kept, steady = [], []
        reports = []
        for epoch in range(4):
            for _ in range(4):
                kept.append(make())  # the leak: 4 MiB per epoch on the GPU
                steady[:] = [make()]  # replaced: no growth
            report = tracer.epoch_end(epoch, suspected=False)
            if report is not None:
                reports.append(report)
        (report,) = reports
        (site,) = report.sites
        with open(__file__) as f:
            line = next(n for n, text in enumerate(f, 1) if text.rstrip().endswith("on the GPU"))
        assert (site.filename, site.lineno) == (__file__, line), name
        assert site.tensor_bytes_per_epoch == 4 * MIB, name
        assert re.search(r"float32\[256,1024\] on (cuda|gpu)", site.what[0].lower()), site.what
