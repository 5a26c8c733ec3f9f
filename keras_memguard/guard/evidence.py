"""The evidence a halt hands over: what memory looked like, in the viewers users open.

At a halt (and, on PyTorch with CUDA, at a CUDA out-of-memory error) the guard writes a
bundle beside the checkpoint: ``<log_dir>/memory_evidence/`` (without a ``log_dir``,
the checkpoint's directory), capped in size (``guard/evidence_bundle.py``):

- ``summary.json`` / ``summary.txt``: the halt, every figure and bound, the fit's
  summary, the leak sites, the kinds of growth and the pre-flight estimate;
- ``leak_sites.txt`` (the sites with their tracebacks), ``growth.json`` /
  ``growth.txt``, ``estimate.json`` / ``estimate.txt``, where there are any;
- the framework's own (``backends/<framework>/evidence.py``): JAX's device memory
  profile (pprof), TensorFlow's per-device bytes, PyTorch's memory snapshot and its
  HTML plots.

Nothing costs anything while memory is far from its bounds: the framework's recording
(PyTorch's allocation history) is switched on only once a guarded figure first reaches
``RECORD_FROM`` of its bound (:func:`bound_fractions`, a pure function over a snapshot).

Example:
    >>> keeper = EvidenceKeeper(check_evidence(True))
    >>> keeper.begin("logs/memory_evidence", guard.summary, guard.bounds, estimate=None)
    >>> keeper.observe(snap)                    # at each check
    >>> keeper.write("keras-memguard: stopping training: ...", halt, snap)
    'logs/memory_evidence'
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

from keras_memguard.backends.base import BACKENDS, backend_module, backend_name
from keras_memguard.errors import invalid_argument, warn_once
from keras_memguard.estimate.step import STEP_PART
from keras_memguard.guard.evidence_bundle import DIRECTORY, Bundle
from keras_memguard.guard.headroom import gpu_bound
from keras_memguard.guard.policy import Bounds, Halt, MemGuardSummary, available_floor, bounds_mib
from keras_memguard.memory_snapshot import MemorySnapshot
from keras_memguard.sizes import format_bytes, parse_size

__all__ = [
    "DEFAULT_MAX_BYTES",
    "RECORD_ENTRIES",
    "RECORD_FROM",
    "EvidenceKeeper",
    "bound_fractions",
    "check_evidence",
    "evidence_directory",
    "summary_record",
]

DEFAULT_MAX_BYTES = 64 * 2**20
MIN_MAX_BYTES = 32 * 1024
RECORD_FROM = 0.8  # recording switches on once a figure first reaches this share of its bound
RECORD_ENTRIES = 10_000  # PyTorch: allocation history entries kept (the oldest drop out)


def check_evidence(value: Any) -> int | None:
    """The ``evidence`` argument as the bundle's cap in bytes (``None``: no bundle).

    Example:
        >>> check_evidence(True), check_evidence(False), check_evidence("1MiB")
        (67108864, None, 1048576)
    """
    if value is True:
        return DEFAULT_MAX_BYTES
    if value is False or value is None:
        return None
    expected = (
        f"True (a bundle of at most {format_bytes(DEFAULT_MAX_BYTES)}), False (none), "
        f"or the cap as bytes or a string such as '16MiB' (at least {MIN_MAX_BYTES // 1024} KiB)"
    )
    size = parse_size(value, name="evidence", allow_fraction=False, forms=expected)
    if size.bytes is None or size.bytes < MIN_MAX_BYTES:
        raise invalid_argument("evidence", value, expected, "too small for the summary")
    return size.bytes


def evidence_directory(
    log_dir: str | None, checkpoint_path: str | None, run: str = "memory"
) -> str | None:
    """Where a halt's bundle goes: the log directory, else beside the checkpoint.

    Named after the guard's memory run: ``memory`` -> ``memory_evidence``, ``memory_run2``
    -> ``memory_evidence_run2``, ``memory_worker1`` -> ``memory_evidence_worker1``.
    ``None`` without either directory.

    Example:
        >>> evidence_directory("logs", "ckpt/guard.keras"), evidence_directory(None, "g.keras")
        ('logs/memory_evidence', 'memory_evidence')
    """
    name = DIRECTORY + run.removeprefix("memory")
    if log_dir is not None:
        return os.path.join(log_dir, name)
    if checkpoint_path is not None:
        return os.path.join(os.path.dirname(checkpoint_path), name)
    return None


def bound_fractions(bounds: Bounds, snap: MemorySnapshot) -> dict[str, float]:
    """Each guarded figure as a share of its bound (1.0: at the bound), pure.

    ``process_tree`` of ``max_process_memory``; ``used`` (the limit less what is
    available) of the room above the floor; ``gpu<i>`` of ``max_gpu_memory``, else of
    the allocator's limit (``emergency_available_memory="auto"``).

    Example:
        >>> bound_fractions(Bounds(max_process_memory=parse_size("1GiB", name="m")), snap)
        {'process_tree': 0.82}
    """
    fractions: dict[str, float] = {}
    limit, tree = snap.effective_limit, snap.process_tree
    if bounds.max_process_memory is not None and tree is not None:
        bound = bounds.max_process_memory.resolve(limit)
        if bound:
            fractions["process_tree"] = tree / bound
    floor, available = available_floor(bounds, snap), snap.effective_available
    if floor is not None and available is not None and limit is not None and limit > floor[1]:
        fractions["used"] = (limit - available) / (limit - floor[1])
    for gpu in snap.gpus:
        guarded, bound = gpu.guarded, gpu_bound(bounds, gpu.total, gpu.limit)
        if guarded is not None and bound:
            fractions[f"gpu{gpu.index}"] = guarded[1] / bound
    return fractions


def _json(value: Any) -> Any:
    """A dataclass instance as a dict (enums stay, as strings); anything else as is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def summary_record(
    line: str,
    halt: Halt | None,
    snap: MemorySnapshot | None,
    bounds: Bounds,
    summary: MemGuardSummary,
    estimate: Any,
) -> dict[str, Any]:
    """``summary.json``'s content: the halt, the figures, the fit, its evidence (pure)."""
    fit = {
        key: getattr(summary, key)
        for key in (
            "epochs",
            "start_process_tree",
            "peak_process_tree",
            "min_effective_available",
            "peak_gpu",
            "leak_slope_mib_per_epoch",
        )
    }
    return {
        "trigger": "halt" if halt is not None else "cuda_oom",
        "line": line,
        "halt": None if halt is None else _json(halt),
        "figures_mib": snap.metrics() if snap is not None else {},
        "bounds_mib": bounds_mib(bounds, snap) if snap is not None else {},
        "fractions_of_bounds": bound_fractions(bounds, snap) if snap is not None else {},
        "fit": fit,
        "leak_sites": [_json(site) for site in summary.leak_sites],
        "growth": _json(summary.growth),
        "estimate": _json(estimate),
    }


def _summary_text(line: str, snap: MemorySnapshot | None, summary: MemGuardSummary) -> str:
    lines = [line, "", str(summary), "", "figures at the halt (MiB, %, s):"]
    metrics = snap.metrics() if snap is not None else {}
    lines += [f"  {key}: {value:,.3f}" for key, value in sorted(metrics.items())]
    return "\n".join(lines) + "\n"


def _sites_text(summary: MemGuardSummary) -> str:
    lines = []
    for site in summary.leak_sites:
        lines += [site.describe(), *site.format_traceback(), ""]
    return "\n".join(lines)


def _notes(estimate: Any) -> list[str]:
    """What the bundle lacks and how to get it."""
    part = getattr(estimate, "part", None)
    if part is None or part(STEP_PART) is None:
        return [
            "no compiled step's memory analysis: MemGuardCallback(preflight='full') adds it "
            "to the estimate (XLA's buffer assignment on JAX)"
        ]
    return []


class EvidenceKeeper:
    """One guard's evidence: when to record, and the bundle at a halt or a CUDA OOM.

    Args:
        max_bytes: the bundle's cap (``check_evidence``); ``None`` keeps nothing.
    """

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self.directory: str | None = None
        self.recording_from: dict[str, Any] | None = None  # where recording switched on
        self.framework_recording = False
        self._summary = MemGuardSummary()
        self._bounds = Bounds()
        self._estimate: Any = None
        self._last: MemorySnapshot | None = None
        self._oom_written = False
        self._fit_index: int | None = None
        self._backend: str | None = None  # a name, not the module: the guard stays copyable

    def begin(
        self,
        directory: str | None,
        summary: MemGuardSummary,
        bounds: Bounds,
        estimate: Any,
        fit_index: int | None = None,
    ) -> None:
        """A fit (or a standalone phase) starts: nothing is recorded yet.

        PyTorch's OOM observer is attached already (it costs nothing until an OOM).
        """
        self.close()
        self.directory = directory if self.max_bytes is not None else None
        self._summary, self._bounds, self._estimate = summary, bounds, estimate
        self.recording_from, self._last, self._oom_written = None, None, False
        self._fit_index = fit_index  # the fit's number under log_dir (guard/fits.py)
        name = backend_name()
        self._backend = name if name in BACKENDS else None
        if self._framework is not None and self.directory is not None:
            self._framework.attach_oom_observer(self._on_oom)

    @property
    def _framework(self) -> Any:
        """``backends/<framework>/evidence.py`` of this fit's backend, or ``None``."""
        return None if self._backend is None else backend_module(self._backend, "evidence")

    def observe(self, snap: MemorySnapshot) -> None:
        """At a check: switches recording on once a figure first nears its bound."""
        self._last = snap
        if self.directory is None or self.recording_from is not None:
            return
        fractions = bound_fractions(self._bounds, snap)
        nearest = max(fractions.items(), key=lambda item: item[1], default=None)
        if nearest is None or nearest[1] < RECORD_FROM:
            return
        self.recording_from = {"figure": nearest[0], "fraction": round(nearest[1], 3)}
        if self._framework is not None:
            self.framework_recording = bool(self._framework.start_recording(RECORD_ENTRIES))
            self._framework.attach_oom_observer(self._on_oom)  # CUDA may be up only now

    def close(self) -> None:
        """The fit is over: recording off, the OOM observer detached."""
        if self._framework is not None:
            self._framework.stop_recording()
            self._framework.attach_oom_observer(None)
        self.framework_recording = False

    def _on_oom(self) -> None:
        """PyTorch's allocator ran out (before the error unwinds): one bundle per fit."""
        if not self._oom_written:
            self._oom_written = True
            self.write("CUDA out of memory (the allocator's OOM observer)", None, self._last)

    def write(self, line: str, halt: Halt | None, snap: MemorySnapshot | None) -> str | None:
        """Writes the bundle; returns its directory, or ``None`` (never raises)."""
        if self.directory is None:
            return None
        try:
            return self._write(line, halt, snap)
        except Exception as err:  # evidence must never stop the halt
            warn_once("evidence", f"keras-memguard could not write the halt's evidence: {err!r}")
            return None

    def _write(self, line: str, halt: Halt | None, snap: MemorySnapshot | None) -> str:
        assert self.directory is not None and self.max_bytes is not None
        os.makedirs(os.path.dirname(os.path.abspath(self.directory)), exist_ok=True)
        bundle = Bundle(self.directory, self.max_bytes)
        try:
            summary, estimate = self._summary, self._estimate
            record = summary_record(line, halt, snap, self._bounds, summary, estimate)
            bundle.add_json("summary.json", record, "the halt, every figure and bound, the fit")
            text = _summary_text(line, snap, summary)
            bundle.add_text("summary.txt", text, "the same, for people", "cat summary.txt")
            if summary.leak_sites:
                what = "where the growing memory is allocated, with tracebacks"
                bundle.add_text("leak_sites.txt", _sites_text(summary), what, "cat leak_sites.txt")
            if summary.growth is not None:
                bundle.add_json("growth.json", _json(summary.growth), "the kinds of growth")
                what = "the kinds of growth and what to do"
                bundle.add_text("growth.txt", str(summary.growth) + "\n", what, "cat growth.txt")
            if estimate is not None:
                bundle.add_json("estimate.json", _json(estimate), "the pre-flight's estimate")
                what = "the pre-flight's estimate (the compiled step's analysis with 'full')"
                bundle.add_text("estimate.txt", f"{estimate}\n", what, "cat estimate.txt")
            if self._framework is not None:
                for file in self._framework.write_evidence(bundle.scratch, bundle.budget):
                    bundle.add_written(file.name, file.what, file.opens_with)
            meta = {
                "trigger": "halt" if halt is not None else "cuda_oom",
                "notes": _notes(estimate),
                "line": line,
                "fit_index": self._fit_index,
                "backend": backend_name(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "recording_from": self.recording_from,
                "framework_recording": self.framework_recording,
            }
            return bundle.close(meta)
        except BaseException:
            bundle.abandon()
            raise
