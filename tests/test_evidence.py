"""Issue #28: the evidence a halt hands over, on every backend (docs/evidence.md).

A real halted fit per module (its bundle read back: the summary naming the halt, the
framework's own files, the cap, `memguard report` listing it), a calm fit that never
switches recording on, and the pure decisions: when to record, the cap, PyTorch's
files. PyTorch's CUDA path is run with the GPU faked at its one boundary (the private
calls resolved through `backends/torch/compat.py`); the real GPU check is issue #31.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
from contextlib import redirect_stdout

import keras
import psutil
import pytest
from training import Leak, read_texts, tiny_data, tiny_model

from keras_memguard import MemGuardCallback
from keras_memguard.backends.base import backend_module
from keras_memguard.backends.torch import compat as torch_compat
from keras_memguard.backends.torch import evidence as torch_evidence
from keras_memguard.cli.main import main
from keras_memguard.estimate.parts import EstimatePart, MemoryEstimate, Method
from keras_memguard.estimate.step import STEP_PART
from keras_memguard.guard import evidence as guard_evidence
from keras_memguard.guard.evidence import (
    DEFAULT_MAX_BYTES,
    RECORD_ENTRIES,
    EvidenceKeeper,
    bound_fractions,
    check_evidence,
    evidence_directory,
)
from keras_memguard.guard.evidence_bundle import MANIFEST, Bundle, read_bundle
from keras_memguard.guard.growth import Cycles, GrowthEvidence, classify
from keras_memguard.guard.leaks import LeakSite
from keras_memguard.guard.policy import Bounds, Halt, MemGuardSummary
from keras_memguard.memory_snapshot import GpuSnapshot, MemorySnapshot
from keras_memguard.sizes import parse_size

pytestmark = pytest.mark.backends
KIB, MIB, GIB = 2**10, 2**20, 2**30
BACKEND = keras.backend.backend()
CAP = 256 * KIB


def snap(tree=400 * MIB, available=20 * GIB, gpus=()):
    return MemorySnapshot(
        timestamp=0.0,
        process_tree=tree,
        system_total=24 * GIB,
        system_available=available,
        gpus=gpus,
    )


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))


# --------------------------------------------------------------- one halted fit
@pytest.fixture(scope="module")
def halted(tmp_path_factory):
    """A fit that leaks until its bound halts it, with a checkpoint and a log dir."""
    root = tmp_path_factory.mktemp("evidence")
    tree = psutil.Process().memory_info().rss
    guard = MemGuardCallback(
        log_dir=root / "logs",
        max_process_memory=tree + 160 * MIB,
        checkpoint_path=root / "ckpt" / "guard.keras",
        check_every_n_batches=1,
        emergency_available_memory=None,
        preflight="full" if BACKEND == "jax" else "cheap",  # JAX: the compiled step's analysis
        evidence="256KiB",
    )
    x, y = tiny_data(samples=512)
    tiny_model().fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[guard, Leak(8)])
    bundle = root / "logs" / "memory_evidence"
    return guard, root, bundle


def test_a_halt_writes_a_summary_naming_it_beside_the_checkpoint(halted):
    guard, root, bundle = halted
    (halt,) = guard.summary.halts
    summary = json.loads((bundle / "summary.json").read_text())
    assert summary["trigger"] == "halt" and summary["halt"]["metric"] == "process_tree"
    assert summary["halt"]["checkpoint"] == str(root / "ckpt" / "guard.keras")
    assert summary["halt"]["epoch"] == halt.epoch and summary["halt"]["batch"] == halt.batch
    assert summary["halt"]["value"] == halt.value and summary["halt"]["bound"] == halt.bound
    assert summary["fit"]["start_process_tree"] == guard.summary.start_process_tree
    assert summary["estimate"]["parts"][0]["name"] == "variables"  # the pre-flight's
    text = (bundle / "summary.txt").read_text()
    assert text.startswith(summary["line"]) and "stop: process_tree" in text
    # the printed (and TensorBoard) halt line says where the evidence is
    (line,) = read_texts(str(root / "logs" / "memory"))
    assert line == f"{summary['line']}; memory evidence in {bundle}"


def test_the_manifest_lists_every_file_under_the_cap(halted):
    _, _, bundle = halted
    manifest = read_bundle(str(bundle))
    assert manifest["trigger"] == "halt" and manifest["backend"] == BACKEND
    full = BACKEND == "jax"  # the fixture's pre-flight: "full" on JAX, else "cheap"
    assert bool(manifest["notes"]) is not full  # "preflight='full' adds the step analysis"
    names = [entry["name"] for entry in manifest["files"]]
    assert names[:2] == ["summary.json", "summary.txt"]
    assert sorted([*names, MANIFEST]) == sorted(os.listdir(bundle))
    for entry in manifest["files"]:
        assert os.path.getsize(bundle / entry["name"]) == entry["bytes"]
        assert entry["name"] in entry["open"]
    assert manifest["max_bytes"] == CAP and directory_bytes(bundle) <= CAP
    # memory neared its bound (80%) before the halt: recording was switched on then
    assert manifest["recording_from"]["figure"] == "process_tree"
    assert manifest["recording_from"]["fraction"] >= guard_evidence.RECORD_FROM


def test_report_lists_the_bundle_and_how_to_open_each_file(halted):
    _, root, bundle = halted
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", str(root / "logs")]) == 0
    text = out.getvalue()
    assert f"memory evidence (halt) in {bundle}" in text
    for entry in read_bundle(str(bundle))["files"]:
        assert entry["open"].replace(entry["name"], str(bundle / entry["name"])) in text
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", str(root / "logs"), "--json"]) == 0
    (run,) = [r for r in json.loads(out.getvalue()) if r["run"] == "memory"]
    assert run["evidence"]["path"] == str(bundle)


def _protobuf_fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """The fields of one protobuf message (wire format); raises where it is malformed."""
    fields, i = [], 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: bytes | int = varint()
        elif wire == 2:
            size = varint()
            value, i = data[i : i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = data[i : i + size], i + size
        else:
            raise ValueError(f"wire type {wire} at byte {i}")
        fields.append((number, value))
    assert i == len(data), "the message runs past its end"
    return fields


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's device memory profile")
def test_jax_halt_keeps_a_pprof_profile_and_the_compiled_step_analysis(halted):
    _, _, bundle = halted
    raw = (bundle / "device_memory.prof").read_bytes()
    assert raw[:2] == b"\x1f\x8b"  # gzip
    fields = _protobuf_fields(gzip.decompress(raw))  # a pprof Profile message
    strings = [value.decode() for number, value in fields if number == 6]  # string_table
    assert {"space", "bytes"} <= set(strings)
    assert sum(number == 2 for number, _ in fields) >= 1  # samples: live buffers
    step = [p for p in json.loads((bundle / "estimate.json").read_text())["parts"]]
    (temporaries,) = [p for p in step if p["name"] == "step temporaries"]
    assert temporaries["method"] == "compiled" and "XLA buffer assignment" in temporaries["detail"]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's per-device figures")
def test_tensorflow_halt_keeps_each_devices_bytes(halted):
    _, _, bundle = halted
    devices = json.loads((bundle / "device_memory.json").read_text())["devices"]
    (cpu,) = [d for d in devices if d["type"] == "CPU"]
    assert isinstance(cpu["current_bytes"], int) and isinstance(cpu["peak_bytes"], int)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch on CPU")
def test_torch_on_cpu_keeps_no_snapshot_and_records_nothing(halted):
    _, _, bundle = halted
    assert not (bundle / torch_evidence.SNAPSHOT).exists()
    assert read_bundle(str(bundle))["framework_recording"] is False
    assert not torch_evidence.is_recording()


def test_a_later_fit_of_the_guard_replaces_its_runs_bundle(tmp_path):
    guard = MemGuardCallback(log_dir=tmp_path, max_process_memory=MIB, preflight=False)
    x, y, model = *tiny_data(samples=32), tiny_model()
    for _ in range(2):  # one model: its step is compiled once
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[guard])
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", str(tmp_path), "--json"]) == 0
    runs = [run for run in json.loads(out.getvalue()) if "evidence" in run]
    assert [(run["run"], run["evidence"]["path"]) for run in runs] == [
        ("memory", str(tmp_path / "memory_evidence"))
    ]
    assert runs[0]["evidence"]["fit_index"] == 2  # the latest halt: the guard's second fit


def test_a_calm_fit_records_nothing_and_writes_no_bundle(tmp_path):
    guard = MemGuardCallback(
        log_dir=tmp_path, max_process_memory="90%", emergency_available_memory=None
    )
    x, y = tiny_data(samples=64)
    tiny_model().fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[guard])
    assert guard._evidence.recording_from is None
    assert not guard._evidence.framework_recording
    assert not (tmp_path / "memory_evidence").exists()


# ------------------------------------------------------------- pure decisions
def test_recording_switches_on_from_80_percent_of_a_bound():
    bounds = Bounds(max_process_memory=parse_size("1GiB", name="m"))
    assert bound_fractions(bounds, snap(tree=512 * MIB)) == {"process_tree": 0.5}
    floor = Bounds(min_available_memory=parse_size("4GiB", name="m"))
    assert bound_fractions(floor, snap(available=8 * GIB)) == {"used": 16 / 20}
    gpu = GpuSnapshot(0, total=16 * GIB, allocated_peak=12 * GIB, limit=12 * GIB + 512 * MIB)
    assert bound_fractions(Bounds(), snap(gpus=(gpu,))) == {}  # no GPU bound at all
    auto = bound_fractions(Bounds(auto_floor=True), snap(gpus=(gpu,)))
    assert auto["gpu0"] == pytest.approx(12 / (12.5 - 0.5))  # allocator limit less its floor
    keeper = EvidenceKeeper(DEFAULT_MAX_BYTES)
    keeper.begin("unused", MemGuardSummary(), bounds, None)
    keeper.observe(snap(tree=700 * MIB))
    assert keeper.recording_from is None
    keeper.observe(snap(tree=820 * MIB))
    assert keeper.recording_from == {"figure": "process_tree", "fraction": 0.801}
    keeper.close()


def test_evidence_argument_and_directory():
    assert check_evidence(True) == DEFAULT_MAX_BYTES == 64 * MIB
    assert check_evidence(False) is None
    assert check_evidence("1MiB") == MIB
    for bad in ("1KiB", "50%", "lots"):
        with pytest.raises(ValueError, match=r"`evidence`.*Received: evidence="):
            check_evidence(bad)
    with pytest.raises(ValueError, match="evidence"):
        MemGuardCallback(evidence="10B")
    assert evidence_directory("logs", "ckpt/g.keras") == os.path.join("logs", "memory_evidence")
    assert evidence_directory(None, "ckpt/g.keras") == os.path.join("ckpt", "memory_evidence")
    assert evidence_directory("logs", None, "memory_worker2").endswith("memory_evidence_worker2")
    assert evidence_directory("logs", None, "memory_fit3").endswith("memory_evidence_fit3")
    assert evidence_directory(None, None) is None
    assert EvidenceKeeper(None).write("a halt", None, snap()) is None


def test_the_bundle_keeps_the_leak_sites_the_growth_and_the_estimate(tmp_path):
    site = LeakSite("train.py", 12, "step", 4 * MIB, 8, traceback=(("train.py", 12),))
    summary = MemGuardSummary(epochs=6, leak_sites=[site])
    summary.growth = classify(GrowthEvidence(3, 5, rss_growth=4 * MIB, cycles=Cycles(4 * MIB)))
    step = EstimatePart(STEP_PART, 3 * MIB, Method.COMPILED, "XLA buffer assignment: ...")
    keeper = EvidenceKeeper(DEFAULT_MAX_BYTES)
    bounds = Bounds(max_process_memory=parse_size("1GiB", name="m"))
    keeper.begin(str(tmp_path / "memory_evidence"), summary, bounds, MemoryEstimate((step,)))
    halt = Halt("process_tree", 1100 * MIB, GIB, 5, 3, "stop", None)
    bundle = tmp_path / "memory_evidence"
    assert keeper.write("keras-memguard: stopping training: ...", halt, snap()) == str(bundle)
    keeper.close()
    assert (bundle / "leak_sites.txt").read_text().startswith("train.py:12 in step: +4.0 MiB")
    assert json.loads((bundle / "growth.json").read_text())["kinds"][0]["kind"] == "cycles"
    assert (bundle / "growth.txt").read_text().startswith("kinds of growth (+4.0 MiB/epoch")
    estimate = json.loads((bundle / "estimate.json").read_text())
    assert estimate["parts"][0]["method"] == "compiled"
    summary_json = json.loads((bundle / "summary.json").read_text())
    assert summary_json["leak_sites"][0]["lineno"] == 12
    assert summary_json["halt"]["epoch"] == 5 and summary_json["fit"]["epochs"] == 6
    assert read_bundle(str(bundle))["notes"] == []  # the step's analysis is there


def test_the_cap_holds_and_names_what_was_left_out(tmp_path):
    target = str(tmp_path / "memory_evidence")
    bundle = Bundle(target, max_bytes=48 * KIB)  # 32 KiB for files, 16 KiB for the manifest
    assert bundle.add_text("a.txt", "a" * 20 * KIB, "first", "cat a.txt")
    assert not bundle.add_text("b.txt", "b" * 20 * KIB, "too big now", "cat b.txt")
    assert bundle.add_text("c.txt", "c" * 8 * KIB, "still fits", "cat c.txt")
    with open(os.path.join(bundle.scratch, "d.bin"), "wb") as f:
        f.write(b"d" * 8 * KIB)  # as a framework writes its file
    assert not bundle.add_written("d.bin", "over the cap", "xxd d.bin")
    assert bundle.close({"trigger": "halt"}) == target
    assert sorted(os.listdir(target)) == ["a.txt", "c.txt", MANIFEST]
    assert directory_bytes(target) <= 48 * KIB
    manifest = read_bundle(target)
    assert [e["name"] for e in manifest["left_out"]] == ["b.txt", "d.bin"]
    assert manifest["bytes"] == 28 * KIB and not os.path.exists(bundle.scratch)
    second = Bundle(target, max_bytes=48 * KIB)  # the next halt replaces it whole
    second.add_text("e.txt", "e", "new", "cat e.txt")
    second.close({"trigger": "halt"})
    assert sorted(os.listdir(target)) == ["e.txt", MANIFEST]


def test_report_lists_a_bundle_beside_a_checkpoint_without_a_log_dir(tmp_path, capsys):
    target = tmp_path / "ckpt" / "memory_evidence"
    bundle = Bundle(str(target), max_bytes=MIB)
    halt = "keras-memguard: stopping training"
    bundle.add_text("summary.txt", halt, "the halt", "cat summary.txt")
    bundle.close({"trigger": "halt", "notes": ["no compiled step's memory analysis"]})
    assert main(["report", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        f"evidence {os.path.join('ckpt', 'memory_evidence')}",
        f"  memory evidence (halt) in {target}: 33 B of at most 1.0 MiB",
    ]
    assert f"      open: cat {target / 'summary.txt'}" in lines
    assert "    note: no compiled step's memory analysis" in lines


def test_torch_writes_the_snapshot_and_its_plots_only_where_they_fit():
    write = torch_evidence.files_to_write
    snapshot, trace, segments = (
        "memory_snapshot.pickle",
        "memory_trace.html",
        "memory_segments.html",
    )
    assert write(False, True, MIB, 64 * MIB) == ()  # no CUDA: nothing
    assert write(True, True, 4 * MIB, 64 * MIB) == (snapshot, trace, segments)
    assert write(True, False, 4 * MIB, 64 * MIB) == (snapshot, segments)  # no history: no trace
    assert write(True, True, 20 * MIB, 64 * MIB) == (snapshot, trace)  # 20 + 30 fit, not + 30
    assert write(True, True, 40 * MIB, 64 * MIB) == (snapshot,)
    assert write(True, True, 80 * MIB, 64 * MIB) == ()


# ------------------------------------- PyTorch's CUDA path, the GPU faked (issue #31: real)
class FakeCudaAllocator:
    """torch's private allocator calls as ``backends/torch/compat.py`` names them."""

    def __init__(self):
        self.history: list[dict] = []
        self.observers: list = []
        self.snapshots = 0

    def record(self, enabled="all", **options):
        self.history.append({"enabled": enabled, **options})

    def snapshot(self):
        self.snapshots += 1
        return {"segments": [{"total_size": 2 * MIB, "blocks": []}], "device_traces": [[]]}

    def resolve(self, symbol, **_):
        return {
            torch_compat.RECORD_MEMORY_HISTORY: self.record,
            torch_compat.MEMORY_SNAPSHOT: self.snapshot,
            torch_compat.ATTACH_OOM_OBSERVER: self.observers.append,
            torch_compat.TRACE_PLOT: lambda data: "<html>trace</html>",
            torch_compat.SEGMENT_PLOT: lambda data: "<html>segments</html>",
        }[symbol]


def test_torch_cuda_records_near_the_bound_and_dumps_at_an_oom(tmp_path, monkeypatch):
    fake = FakeCudaAllocator()
    monkeypatch.setattr(torch_evidence, "is_initialized", lambda: True)
    monkeypatch.setattr(torch_evidence, "resolve", fake.resolve)
    monkeypatch.setattr(
        torch_evidence, "_state", {"recording": False, "observer": False, "on_oom": None}
    )
    monkeypatch.setattr(guard_evidence, "backend_name", lambda: "torch")
    keeper = EvidenceKeeper(DEFAULT_MAX_BYTES)
    bounds = Bounds(max_process_memory=parse_size("1GiB", name="m"))
    keeper.begin(str(tmp_path / "memory_evidence"), MemGuardSummary(), bounds, None)
    (observer,) = fake.observers  # attached from the start: it costs nothing until an OOM
    keeper.observe(snap(tree=500 * MIB))
    assert fake.history == []  # far from the bound: no recording
    keeper.observe(snap(tree=900 * MIB))
    assert fake.history == [
        {"enabled": "all", "context": "all", "stacks": "python", "max_entries": RECORD_ENTRIES}
    ]
    assert len(fake.observers) == 1  # attached once per process
    observer(0, 2 * GIB, 14 * GIB, 0)  # the allocator runs out: (device, alloc, used, free)
    observer(0, 2 * GIB, 14 * GIB, 0)  # one bundle per fit
    bundle = tmp_path / "memory_evidence"
    manifest = read_bundle(str(bundle))
    assert manifest["trigger"] == "cuda_oom" and manifest["framework_recording"] is True
    with open(bundle / "memory_snapshot.pickle", "rb") as f:
        assert pickle.load(f)["segments"][0]["total_size"] == 2 * MIB
    assert (bundle / "memory_trace.html").read_text() == "<html>trace</html>"
    assert "pytorch.org/memory_viz" in manifest["files"][-3]["open"]
    keeper.close()
    assert fake.history[-1] == {"enabled": None} and not torch_evidence.is_recording()
    observer(0, 2 * GIB, 14 * GIB, 0)  # after the fit: detached, nothing written
    assert fake.snapshots == 1


def test_every_framework_folder_keeps_evidence_with_the_same_calls():
    for name in ("tensorflow", "jax", "torch"):
        module = backend_module(name, "evidence")
        assert module.start_recording(10) is False  # no CUDA here: nothing switched on
        assert module.attach_oom_observer(None) is False
        module.stop_recording()
