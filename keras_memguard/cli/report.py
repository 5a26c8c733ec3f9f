"""``memguard report LOGDIR``: what the memory runs under a log directory show.

It reads the ``memory/...`` scalars that ``MemGuardCallback`` wrote (every run under
LOGDIR that has them), and summarizes each: peaks, final values, leak slope, halts, and
the allocation sites of a leak (the ``memory/leak_sites`` text) and the kinds of growth
(the ``memory/growth`` text), and lists the evidence a halt kept (``memory_evidence/``)
with the command that opens each file (``cli/evidence.py``).
A run killed before its train end (the OOM killer, a scheduler) may have written no
scalars at all; its heartbeat file (guard/heartbeat.py) still says where it was, and
:func:`post_mortem` says what can be told from it: how the run ended and why, as far as
the container's OOM-kill count and the last figures show.
``--plot FILE.png`` draws memory over epochs with the bounds as dashed lines (needs the
``plot`` extra), ``--json`` prints the same data for machines.

Example:
    $ memguard report logs/
    $ memguard report logs/ --plot memory.png
"""

from __future__ import annotations

import glob
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from keras_memguard.cli.evidence import bundle_lines, bundles_by_run
from keras_memguard.errors import WATCHDOG_EXIT_CODE, MemGuardError
from keras_memguard.guard.growth import growth_lines
from keras_memguard.guard.heartbeat import read_heartbeat
from keras_memguard.guard.tensorboard import event_files, read_events, tensor_value
from keras_memguard.probes.cgroup import read_oom_kills
from keras_memguard.sizes import format_bytes

__all__ = [
    "ReportError",
    "RunReport",
    "find_runs",
    "format_report",
    "load_report",
    "plot_report",
    "post_mortem",
    "read_run",
    "report_json",
]

PREFIXES = ("memory/", "memory_batch/", "memory_watchdog/", "fits/")
MIB = 2**20
# Available memory below this fraction of the limit at the last heartbeat: "nearly out".
NEARLY_OUT = 0.05


class ReportError(MemGuardError):
    """The log directory cannot be reported on; the message says why."""


@dataclass
class RunReport:
    """One run's memory series: ``{tag: [(step, value), ...]}``, halts and leak sites."""

    name: str
    path: str
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    halts: list[str] = field(default_factory=list)
    fit_runs: dict[int, str] = field(default_factory=dict)  # the summary run: step -> run
    leak_sites: list[str] = field(default_factory=list)  # issue #16: one line per site
    watchdog: list[str] = field(default_factory=list)  # issue #24: the watchdog's lines
    heartbeat: dict[str, Any] | None = None  # issue #24: the run's last heartbeat
    growth: list[str] = field(default_factory=list)  # issue #27: one line per kind
    evidence: dict[str, Any] | None = None  # issue #28: the halt's bundle (its manifest)

    def fits(self) -> list[dict[str, Any]]:
        """The summary run's fits: index, run, start, end and peak MiB, by index."""
        rows: dict[int, dict[str, Any]] = {}
        for tag, points in self.scalars.items():
            if tag.startswith("fits/"):
                for step, value in points:
                    row = rows.setdefault(step, {"index": step, "run": self.fit_runs.get(step)})
                    row[tag[len("fits/") :]] = value
        return [rows[index] for index in sorted(rows)]

    def series(self, key: str) -> list[tuple[int, float]]:
        return self.scalars.get("memory/" + key, [])

    def fit_indices(self) -> list[int]:
        """The fits that wrote epochs to this run (``memory/fit_index``), in step order."""
        indices: list[int] = []
        for _, value in self.series("fit_index"):
            if not indices or indices[-1] != int(value):
                indices.append(int(value))
        return indices

    def summary(self) -> dict[str, Any]:
        """Peak, lowest and final value of each epoch-level tag, and the halts."""
        figures: dict[str, Any] = {}
        for tag, points in sorted(self.scalars.items()):
            if not tag.startswith("memory/") or not points:
                continue
            values = [v for _, v in points]
            figures[tag[len("memory/") :]] = {
                "peak": max(values),
                "lowest": min(values),
                "final": values[-1],
                "epochs": len(values),
            }
        summary: dict[str, Any] = {
            "run": self.name,
            "path": self.path,
            "figures": figures,
            "halts": self.halts,
            "leak_sites": self.leak_sites,
            "growth": self.growth,
        }
        if self.fits():
            summary["fits"] = self.fits()
        if self.fit_indices():
            summary["fit_indices"] = self.fit_indices()
        if self.watchdog:
            summary["watchdog"] = self.watchdog
        if self.evidence is not None:
            summary["evidence"] = self.evidence
        if self.heartbeat is not None:
            summary["heartbeat"] = self.heartbeat
            summary["post_mortem"] = post_mortem(self.heartbeat)
        return summary


def find_runs(log_dir: str) -> list[str]:
    """Directories under ``log_dir`` (itself included) that hold event files."""
    if not os.path.isdir(log_dir):
        raise ReportError(f"{log_dir!r} is not a directory.")
    runs = set()
    pattern = os.path.join(log_dir, "**", "events.out.tfevents.*")
    for path in glob.glob(pattern, recursive=True):
        runs.add(os.path.dirname(path))
    return sorted(runs)


def read_run(run_dir: str, name: str | None = None) -> RunReport:
    """Reads every memory scalar and halt text of one run directory (without TensorFlow)."""
    report = RunReport(name=name or os.path.basename(run_dir), path=run_dir)
    for path in event_files(run_dir):
        for event in read_events(path):
            for value in event.summary.value:
                if not value.tag.startswith(PREFIXES):
                    continue
                content = tensor_value(value)
                if isinstance(content, float):
                    report.scalars.setdefault(value.tag, []).append((event.step, content))
                elif isinstance(content, str) and value.tag == "memory/halt":
                    report.halts.append(content)
                elif isinstance(content, str) and value.tag == "fits/run":
                    report.fit_runs[event.step] = content
                elif isinstance(content, str) and value.tag == "memory/leak_sites":
                    report.leak_sites = _leak_site_lines(content)  # the latest report wins
                elif isinstance(content, str) and value.tag == "memory/watchdog":
                    report.watchdog.append(content)
                elif isinstance(content, str) and value.tag == "memory/growth":
                    report.growth = growth_lines(content)  # issue #27, the latest wins
    report.heartbeat = read_heartbeat(run_dir)
    for points in report.scalars.values():
        points.sort()
    return report


def _leak_site_lines(markdown: str) -> list[str]:
    """The Markdown list ``LeakReport.markdown()`` writes, as plain lines."""
    return [line.removeprefix("- ").replace("`", "") for line in markdown.splitlines() if line]


def load_report(log_dir: str) -> list[RunReport]:
    """Every run under ``log_dir`` that holds keras-memguard memory scalars."""
    runs = []
    bundles = bundles_by_run(log_dir) if os.path.isdir(log_dir) else {}
    for run_dir in find_runs(log_dir):
        name = os.path.relpath(run_dir, log_dir)
        run = read_run(run_dir, "." if name == "." else name)
        run.evidence = bundles.pop(run_dir, None)
        if run.scalars or run.halts or run.heartbeat is not None:
            runs.append(run)
    for manifest in bundles.values():  # a bundle without its run: beside a checkpoint
        path = manifest["path"]
        runs.append(RunReport(os.path.relpath(path, log_dir), path, evidence=manifest))
    if not runs:
        raise ReportError(
            f"No keras-memguard memory scalars under {log_dir!r}. Train with "
            "MemGuardCallback(log_dir=...) and pass that same directory."
        )
    return runs


def _process_alive(heartbeat: dict[str, Any]) -> bool:
    """Whether the heartbeat's process still runs (on this host; elsewhere: unknown, no)."""
    pid = heartbeat.get("pid")
    if not isinstance(pid, int) or heartbeat.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True


def _where(heartbeat: dict[str, Any]) -> str:
    epoch, batches, phase = heartbeat.get("epoch"), heartbeat.get("batches"), heartbeat.get("phase")
    if epoch is None:
        return f"in {phase or 'an unknown phase'}"
    if phase == "validation":
        return f"in the validation pass of epoch {epoch}"
    if phase in ("evaluate", "predict"):
        return f"in a {phase}() inside epoch {epoch}"
    if not batches:
        return f"in epoch {epoch} before its first batch"
    return f"in epoch {epoch}, {batches:,} training batch(es) into the fit"


def _at(heartbeat: dict[str, Any]) -> tuple[str, float | None]:
    """'at 2.9 of 3.0 GiB (container limit)' and the fraction still available."""
    figures = heartbeat.get("figures") or {}
    limit, available = figures.get("effective_limit_mib"), figures.get("effective_available_mib")
    source = (heartbeat.get("limit") or {}).get("source", "limit")
    if limit is None or available is None:
        tree = figures.get("process_tree_mib")
        return ("" if tree is None else f"with a process tree of {_bytes(tree)}"), None
    return (
        f"at {_bytes(limit - available)} of {_bytes(limit)} ({source})",
        available / limit if limit else None,
    )


def _bytes(mib_value: float) -> str:
    return format_bytes(int(mib_value * MIB))


def post_mortem(
    heartbeat: dict[str, Any],
    oom_kills_now: int | str | None = "read",
    alive: bool | None = None,
) -> str:
    """What a run's last heartbeat tells of how it ended.

    Args:
        heartbeat: the heartbeat file's content.
        oom_kills_now: the cgroup's OOM-kill count now; `"read"` reads it from the cgroup
            the heartbeat names. Defaults to `"read"`.
        alive: whether the process still runs; `None` finds out (same host only).
            Defaults to `None`.

    Example:
        >>> post_mortem({"state": "running", "pid": 1, "epoch": 0, "batches": 0, ...}, 1)
        'the run ended without reaching train end, at 3.0 of 3.0 GiB (container limit) ...'
    """
    state = heartbeat.get("state")
    where = _where(heartbeat)
    at, fraction_left = _at(heartbeat)
    at_where = f"{at} {where}".strip()
    if state == "ended":
        return "the run reached train end"
    if state == "watchdog":
        return (
            f"the guard's watchdog ended the process (exit code {WATCHDOG_EXIT_CODE}) {at_where}, "
            "before the kernel's OOM killer would have: memory was growing while the training "
            "thread could not reach a check"
        )
    if state in ("raised", "exited"):
        return (
            f"the run ended without reaching train end, {at_where}: fit raised an exception "
            "(or the script stopped); the process itself exited normally"
        )
    if alive is None:
        alive = _process_alive(heartbeat)
    if alive:
        age = time.time() - float(heartbeat.get("updated") or 0)
        return (
            f"the run is still running (pid {heartbeat.get('pid')}, last heartbeat {age:.0f} s ago)"
        )
    cgroup = heartbeat.get("cgroup") or {}
    before = cgroup.get("oom_kills_at_start")
    if oom_kills_now == "read":
        path, version = cgroup.get("path"), cgroup.get("version")
        oom_kills_now = read_oom_kills(path, version) if path and version else None
    now = oom_kills_now if isinstance(oom_kills_now, int) else None
    text = f"the run ended without reaching train end, {at_where}: "
    if before is not None and now is not None and now > before:
        return text + (
            f"most likely killed by the OOM killer (the cgroup's OOM-kill count rose from "
            f"{before} to {now})"
        )
    nearly_out = fraction_left is not None and fraction_left < NEARLY_OUT
    if nearly_out:
        counted = "" if now is None else f"; the cgroup's OOM-kill count stayed at {now}"
        return text + f"memory was nearly exhausted: possibly killed by the OOM killer{counted}"
    known = "" if now is None else f"; the cgroup's OOM-kill count did not rise ({now})"
    return text + (
        "cause unknown (killed from outside: SIGKILL, a job scheduler, a crash); memory was "
        f"not near its limit{known}"
    )


def _fmt(value: float | None, unit: str = " MiB") -> str:
    return "n/a" if value is None else f"{value:,.1f}{unit}"


def format_report(runs: list[RunReport]) -> str:
    """A compact table per run."""
    lines = []
    for run in runs:
        if run.fits():
            lines.extend(_format_fits(run))
            continue
        if run.evidence is not None and not run.scalars:  # issue #28: a bundle alone
            lines += [f"evidence {run.name}", *bundle_lines(run.evidence)]
            continue
        figures = run.summary()["figures"]
        if not figures and (run.heartbeat is not None or run.watchdog):
            lines.append(f"run {run.name} (no epoch ended)")  # issue #24: killed early
            lines += _format_heartbeat(run)
            continue

        def get(key: str, which: str, figures: dict[str, Any] = figures) -> float | None:
            entry = figures.get(key)
            return None if entry is None else entry[which]

        epochs = max((f["epochs"] for f in figures.values()), default=0)
        fits = len(run.fit_indices())  # a run continued by several fits of one guard
        lines.append(f"run {run.name} ({epochs} epochs{f' in {fits} fits' if fits > 1 else ''})")
        rows = [
            (
                "process tree",
                get("process_tree_mib", "final"),
                get("process_tree_peak_mib", "peak") or get("process_tree_mib", "peak"),
            ),
            (
                "available",
                get("effective_available_mib", "final"),
                get("effective_available_min_mib", "lowest")
                or get("effective_available_mib", "lowest"),
            ),
        ]
        gpu_keys = sorted(
            k for k in figures if k.startswith("gpu") and k.endswith("_allocated_peak_mib")
        )
        for key in gpu_keys:
            index = key[len("gpu") : -len("_allocated_peak_mib")]
            rows.append((f"GPU {index} alloc. peak", get(key, "final"), get(key, "peak")))
        lines.append(f"  {'':<20}{'final':>14}{'peak / lowest':>16}")
        for label, final, extreme in rows:
            lines.append(f"  {label:<20}{_fmt(final):>14}{_fmt(extreme):>16}")
        for key, label in (
            ("bound_process_mib", "process bound"),
            ("bound_available_mib", "available floor"),
        ):
            if key in figures:
                lines.append(f"  {label:<20}{_fmt(get(key, 'final')):>14}")
        slope = get("leak_slope_mib_per_epoch", "final")
        if slope is not None:
            lines.append(f"  {'growth':<20}{_fmt(slope, ' MiB/epoch'):>14}")
        lines.append(f"  halts: {len(run.halts)}")
        for halt in run.halts:
            lines.append(f"    {halt}")
        if run.leak_sites:  # issue #16
            lines.append("  leak sites (growth per epoch):")
            lines += [f"    {site}" for site in run.leak_sites]
        if run.growth:  # issue #27
            lines.append("  kinds of growth (per epoch, share of the growth):")
            lines += [f"    {kind}" for kind in run.growth]
        lines += _format_heartbeat(run)  # issue #24
        if run.evidence is not None:  # issue #28
            lines += bundle_lines(run.evidence)
    return "\n".join(lines)


def _format_heartbeat(run: RunReport) -> list[str]:
    """The watchdog's lines and, for a run that did not reach train end, its post-mortem."""
    lines = [f"  watchdog: {line}" for line in run.watchdog]
    beat = run.heartbeat
    if beat is None or beat.get("state") == "ended":
        return lines
    lines.append(f"  how it ended: {post_mortem(beat)}")
    figures = beat.get("figures") or {}
    updated = beat.get("updated")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(updated)))
        if isinstance(updated, (int, float))
        else "?"
    )
    lines.append(
        f"  last heartbeat {when}: process tree {_fmt(figures.get('process_tree_mib'))}, "
        f"available {_fmt(figures.get('effective_available_mib'))}"
    )
    return lines


def _format_fits(run: RunReport) -> list[str]:
    """The summary run: one line per fit or trial, and the growth across them."""
    rows = run.fits()
    lines = [f"fits in {run.name} ({len(rows)})"]
    lines.append(f"  {'fit':>5}  {'run':<24}{'start':>14}{'end':>14}{'peak':>14}")
    for row in rows:
        lines.append(
            f"  {row['index']:>5}  {row['run'] or '?':<24}{_fmt(row.get('start_mib')):>14}"
            f"{_fmt(row.get('end_mib')):>14}{_fmt(row.get('peak_mib')):>14}"
        )
    ends = [(row["index"], row["end_mib"]) for row in rows if row.get("end_mib") is not None]
    if len(ends) >= 2 and ends[-1][0] != ends[0][0]:
        slope = (ends[-1][1] - ends[0][1]) / (ends[-1][0] - ends[0][0])
        lines.append(f"  {'growth':<20}{_fmt(slope, ' MiB/fit'):>14}  (end of first to last)")
    return lines


def report_json(runs: list[RunReport]) -> str:
    return json.dumps([run.summary() for run in runs], indent=2)


def plot_report(runs: list[RunReport], path: str) -> str:
    """Draws memory over epochs with the bounds as dashed lines; returns ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ReportError("--plot needs matplotlib: pip install 'keras-memguard[plot]'") from None
    panels = [
        (
            "Process tree (MiB)",
            ["process_tree_mib", "process_tree_peak_mib"],
            ["bound_process_mib"],
        ),
        ("Available memory (MiB)", ["effective_available_mib"], ["bound_available_mib"]),
    ]
    if any(k.startswith("memory/gpu") for run in runs for k in run.scalars):
        panels.append(
            (
                "GPU memory (MiB)",
                ["gpu0_allocated_peak_mib", "gpu0_device_used_mib"],
                ["gpu0_bound_mib"],
            )
        )
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), squeeze=False)
    for ax, (title, keys, bounds) in zip(axes[:, 0], panels, strict=True):
        for run in runs:
            for key in keys:
                points = run.series(key)
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=f"{run.name}: {key}")
            for key in bounds:
                points = run.series(key)
                if points:
                    ax.plot(
                        *zip(*points, strict=True),
                        linestyle="--",
                        color="red",
                        label=f"{run.name}: {key}",
                    )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
