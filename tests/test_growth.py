"""Issue #27: the guard says what *kind* of growth it is, with its figure.

The subprocess tests run real ``fit()`` calls (tests/growth_training.py) that each grow
memory one way, 512 KiB per batch and 8 batches per epoch (4 MiB per epoch), on the
backend named by ``KERAS_BACKEND`` (TensorFlow when unset); they carry the ``backends``
marker, so CI runs them once per backend:
``KERAS_BACKEND=jax /work/venvs/jax/bin/python -m pytest -m backends tests/test_growth.py``.
The guard before issue #27 names no kind at all, and no site for cycles, native memory
or recompilation.
"""

from __future__ import annotations

import json
import os

import pytest
from training import marked_site, run_scenario

from keras_memguard.cli.main import main as memguard
from keras_memguard.cli.report import load_report
from keras_memguard.guard.growth import (
    Compilations,
    Cycles,
    GrowthEvidence,
    classify,
    growth_lines,
)
from keras_memguard.guard.growth_probe import collect_cycles
from keras_memguard.guard.leaks import LeakSite

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
MIB = 2**20
INJECTED = 4 * MIB  # per epoch, in every leaking scenario


def _site(name: str) -> str:
    return marked_site("growth_training.py", name)


def _train(scenario: str, workdir) -> dict:
    return run_scenario("growth_training.py", scenario, workdir)


def _within(value: float, expected: float, ratio: float = 1.6) -> bool:
    return expected / ratio <= value <= expected * ratio


def _warned(result: dict, kind: str) -> bool:
    """Whether a warning named ``kind``: the growth warning, or the report's own (when
    the report came after that warning)."""
    return any(
        f"Kinds of growth: {kind} +" in w or ("kinds of growth (+" in w and f"\n  {kind} +" in w)
        for w in result["warnings"]
    )


# --------------------------------------------------------------- real fit() runs
@pytest.mark.backends
@pytest.mark.slow
def test_numpy_arrays_kept_per_batch_are_objects_at_their_line(tmp_path):
    result = _train("numpy", tmp_path)
    top = result["kinds"][0]
    assert top["kind"] == "objects", result["summary"]
    assert _within(top["bytes_per_epoch"], INJECTED), top
    assert top["evidence"][0].startswith(f"{_site('numpy')} in KeepArrays.on_train_batch_end")
    assert top["share"] > 0.6
    assert not {"native", "cycles", "unexplained"} & {k["kind"] for k in result["kinds"]}
    assert _warned(result, "objects")


@pytest.mark.backends
@pytest.mark.slow
def test_tensors_kept_per_batch_are_tensors_at_their_line(tmp_path):
    result = _train("tensors", tmp_path)
    top = result["kinds"][0]
    assert top["kind"] == "tensors", result["summary"]
    assert _within(top["bytes_per_epoch"], INJECTED), top
    assert top["evidence"][0].startswith(f"{_site('ops')} in KeepTensors.on_train_batch_end")
    assert "native" not in {k["kind"] for k in result["kinds"]}


@pytest.mark.backends
@pytest.mark.slow
def test_reference_cycles_are_what_a_full_collection_frees(tmp_path):
    result = _train("cycles", tmp_path)
    top = result["kinds"][0]
    assert top["kind"] == "cycles", result["summary"]
    # 7 of the 8 cycles made per epoch are garbage at its end (the last one is still held)
    assert _within(top["bytes_per_epoch"], INJECTED * 7 / 8), top
    assert any(e.startswith(f"created at {_site('cycle')}") for e in top["evidence"]), top
    assert "objects" not in {k["kind"] for k in result["kinds"]}  # not blamed twice
    assert _warned(result, "cycles")


@pytest.mark.backends
@pytest.mark.slow
def test_native_memory_python_does_not_see_is_native_not_a_leak_in_user_code(tmp_path):
    result = _train("native", tmp_path)
    (native,) = result["kinds"]
    assert native["kind"] == "native", result["summary"]
    assert _within(native["bytes_per_epoch"], INJECTED), native
    assert result["sites"] == []  # no line of Python to blame
    assert _warned(result, "native")
    assert "run_isolated" in result["summary"] and "MALLOC_ARENA_MAX" in result["summary"]
    # TensorBoard's text and `memguard report` say the same
    (run,) = [r for r in load_report(os.path.join(tmp_path, "logs")) if r.name == "memory"]
    assert len(run.growth) == 1 and run.growth[0].startswith("native +")


@pytest.mark.backends
@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="jax.monitoring counts compilations on JAX only")
def test_a_jitted_function_given_new_shapes_is_recompilation_with_its_count(tmp_path):
    result = _train("recompile", tmp_path)
    top = result["kinds"][0]
    assert top["kind"] == "recompilation", result["summary"]
    assert top["compilations_per_epoch"] == 8  # one new input shape per batch
    assert any("jit(features) x16" in e for e in top["evidence"]), top
    assert any("features: float32[" in e for e in top["evidence"]), top
    assert top["share"] > 0.5
    assert "native" not in {k["kind"] for k in result["kinds"]}


@pytest.mark.backends
@pytest.mark.slow
def test_a_healthy_run_names_no_kind_even_when_traced(tmp_path):
    result = _train("healthy", tmp_path)
    for run in (result["auto"], result["traced"]):
        # the guard's own tracing is not growth (it read as 1.2-2.0 MiB/epoch, a false
        # warning under load, before the guard counted its own epoch-end work out)
        assert run["slope"] < 1.0, run
        assert run["kinds"] == [], run["summary"]
        assert "kinds of growth" not in run["summary"]
        assert run["warnings"] == []
    assert result["traced"]["traced_epochs"] == [1, 2, 3]  # the probe ran, and found nothing
    (report,) = [r for r in load_report(os.path.join(tmp_path, "logs")) if r.name == "memory"]
    assert report.growth == []


@pytest.mark.backends
@pytest.mark.slow
def test_memory_freed_every_batch_is_not_growth_while_traced(tmp_path):
    # 8 MiB allocated and freed per batch: the probe's malloc_trim gives those pages back
    # at each traced epoch's end and the next epoch takes them again. Counted back as the
    # guard's own drop, they read as +8 MiB per traced epoch: a false growth warning.
    result = _train("churn", tmp_path)
    assert result["traced_epochs"], result  # the probe and its trims ran
    assert result["slope"] < 1.0, result
    assert result["warnings"] == [], result["summary"]


# ----------------------------------------------------------- the pure classifier
def _site_of(host: float, tensors: float = 0.0, line: int = 3) -> LeakSite:
    return LeakSite("train.py", line, "step", host + tensors, 8, tensors)


def test_a_healthy_window_names_nothing():
    report = classify(GrowthEvidence(3, 5, rss_growth=0.2 * MIB, floor=MIB))
    assert report.kinds == ()
    assert str(report) == "no kind of growth to name (epochs 3-5)"


def test_kinds_are_listed_by_size_with_their_share():
    evidence = GrowthEvidence(
        3,
        5,
        rss_growth=10 * MIB,
        sites=(_site_of(2 * MIB, 0, line=3), _site_of(0, 3 * MIB, line=7)),
        cycles=Cycles(4 * MIB, (("train.py:9", 4 * MIB),)),
        floor=MIB,
    )
    report = classify(evidence)
    assert [(k.kind, k.bytes_per_epoch) for k in report.kinds] == [
        ("cycles", 4 * MIB),
        ("tensors", 3 * MIB),
        ("objects", 2 * MIB),
        ("unexplained", 1 * MIB),
    ]
    assert [round(k.share, 2) for k in report.kinds] == [0.4, 0.3, 0.2, 0.1]
    assert report.kinds[0].evidence[1] == "created at train.py:9 +4.0 MiB/epoch"
    assert report.headline().startswith("cycles +4.0 MiB/epoch (40%), tensors +3.0 MiB/epoch")
    assert growth_lines(report.markdown())[0] == report.kinds[0].describe()


def test_rss_growing_alone_is_native_with_what_helps():
    report = classify(GrowthEvidence(3, 5, rss_growth=4 * MIB, trimmed=12 * MIB, floor=MIB))
    (native,) = report.kinds
    assert (native.kind, native.share) == ("native", 1.0)
    assert "malloc_trim(0) gave back 12.0 MiB" in native.describe()
    assert "run_isolated" in native.advice and "MALLOC_ARENA_MAX" in native.advice


def test_steady_compilations_take_the_native_growth_beside_them():
    compiled = Compilations((8, 8), (("jit(step)", 16),), ("step: float32[9,16]",), "test")
    report = classify(GrowthEvidence(3, 5, rss_growth=6 * MIB, compilations=compiled, floor=MIB))
    (kind,) = report.kinds
    assert (kind.kind, kind.bytes_per_epoch, kind.compilations_per_epoch) == (
        "recompilation",
        6 * MIB,
        8,
    )
    assert "latest input shapes step: float32[9,16]" in kind.describe()
    # a one-off compilation (the first epoch's) is not recompilation
    once = Compilations((3, 0), (("jit(step)", 3),), (), "test")
    report = classify(GrowthEvidence(3, 5, rss_growth=6 * MIB, compilations=once, floor=MIB))
    assert [k.kind for k in report.kinds] == ["native"]


def test_a_device_pool_growing_while_live_tensors_stay_flat_is_the_allocator():
    evidence = GrowthEvidence(
        3,
        5,
        rss_growth=0,
        device_allocated_growth=0,
        device_reserved_growth=64 * MIB,
        tensors_on_device=True,
        floor=MIB,
    )
    (kind,) = classify(evidence).kinds
    assert (kind.kind, kind.bytes_per_epoch, kind.share) == ("allocator", 64 * MIB, 1.0)
    # live tensors growing with the pool are the user's tensors, not the allocator
    evidence = GrowthEvidence(
        3,
        5,
        rss_growth=0,
        sites=(_site_of(0, 64 * MIB),),
        device_allocated_growth=64 * MIB,
        device_reserved_growth=64 * MIB,
        tensors_on_device=True,
        floor=MIB,
    )
    assert [k.kind for k in classify(evidence).kinds] == ["tensors"]


def test_a_measured_collection_says_what_it_freed_and_where_it_was_made():
    import sys
    import tracemalloc

    import numpy as np

    class Node:
        pass

    tracemalloc.start(8)
    try:
        for _ in range(4):
            node = Node()
            node.me, node.data = node, np.ones(2**16)  # 512 KiB in a cycle
            line = sys._getframe().f_lineno - 1
        del node
        sample = collect_cycles()
    finally:
        tracemalloc.stop()
    assert _within(sample.freed, 2 * MIB, 1.2)
    assert sample.sites[f"{__file__}:{line}"] == 2 * MIB
    assert sample.what["ndarray float64[65536]"] == 4


def test_memguard_report_prints_the_kinds_and_json_carries_them(tmp_path, capsys):
    from keras_memguard.guard.tensorboard import EventWriter

    report = classify(GrowthEvidence(3, 5, rss_growth=4 * MIB, floor=MIB))
    writer = EventWriter(tmp_path / "memory")
    writer.scalar("memory/process_tree_mib", 800.0, 5)
    writer.text("memory/growth", report.markdown(), 5)
    writer.close()
    assert memguard(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "kinds of growth (per epoch, share of the growth):" in printed
    assert "    native +4.0 MiB/epoch (100%): RSS +4.0 MiB/epoch" in printed
    assert memguard(["report", str(tmp_path), "--json"]) == 0
    (data,) = json.loads(capsys.readouterr().out)
    assert data["growth"] == [report.kinds[0].describe()]


# ------------------------------------------------------------- compile counters
@pytest.mark.tensorflow
def test_tensorflow_traces_are_counted_with_their_input_shapes():
    import tensorflow as tf

    from keras_memguard.backends.tensorflow.introspect import compile_counter

    @tf.function
    def double(x):
        return x * 2

    double(tf.ones((2, 3)))  # traced before counting starts: not counted
    counter = compile_counter()
    assert counter is not None
    counter.start()
    for rows in (4, 5, 6, 6):  # the second (6, 3) reuses its trace
        double(tf.ones((rows, 3)))
    counter.poll()
    counter.stop()
    assert counter.count == 3
    assert counter.functions == {"double": 3}
    assert counter.shapes == [f"double: float32[{rows},3]" for rows in (4, 5, 6)]


def test_jax_compilations_are_counted_by_function_with_their_input_shapes():
    jax = pytest.importorskip("jax")
    import numpy as np

    from keras_memguard.backends.jax.introspect import compile_counter

    @jax.jit
    def triple(x):
        return x * 3

    triple(jax.numpy.ones((2, 3)))
    counter = compile_counter()
    assert counter is not None
    counter.start()
    for rows in (4, 5, 5):  # NumPy inputs: no jitted jnp.ones compiled beside
        triple(np.ones((rows, 3), "float32")).block_until_ready()
    counter.stop()
    triple(jax.numpy.ones((9, 3)))  # after stop(): not counted
    assert counter.functions == {"jit(triple)": 2}
    assert counter.shapes == ["triple: float32[4,3]", "triple: float32[5,3]"]
