"""``memguard report``'s part for halt evidence: each bundle, its files, how to open them.

A bundle (``guard/evidence_bundle.py``) belongs to the memory run beside it:
``<log_dir>/memory_evidence`` to ``<log_dir>/memory``, ``memory_evidence_run2`` to
``memory_run2``, ``memory_evidence_worker1`` to ``memory_worker1``. A bundle without
such a run (written beside a checkpoint, with no ``log_dir``) is reported on its own.
Imports no framework.

Example:
    >>> for line in bundle_lines(read_bundle("logs/memory_evidence")):
    ...     print(line)
      memory evidence (halt) in logs/memory_evidence: 8.3 KiB of at most 64.0 MiB
        summary.json  3.0 KiB  the halt, every figure and bound, the fit
          open: python -m json.tool logs/memory_evidence/summary.json
"""

from __future__ import annotations

import os
from typing import Any

from keras_memguard.guard.evidence_bundle import DIRECTORY, find_bundles, read_bundle
from keras_memguard.sizes import format_bytes

__all__ = ["bundle_lines", "bundle_run", "bundles_by_run"]


def bundle_run(bundle_dir: str) -> str:
    """The memory run a bundle belongs to: ``logs/memory_evidence_run2`` -> ``logs/memory_run2``."""
    parent, name = os.path.split(bundle_dir)
    return os.path.join(parent, "memory" + name[len(DIRECTORY) :])


def bundles_by_run(log_dir: str) -> dict[str, dict[str, Any]]:
    """Each bundle's manifest under ``log_dir``, keyed by the run it belongs to."""
    found = {}
    for directory in find_bundles(log_dir):
        manifest = read_bundle(directory)
        if manifest is not None:
            found[bundle_run(directory)] = manifest
    return found


def _opener(entry: dict[str, Any], directory: str) -> str:
    """The manifest's command with the file's path in place of its bare name."""
    name, command = str(entry.get("name", "")), str(entry.get("open", ""))
    return command.replace(name, os.path.join(directory, name)) if name else command


def bundle_lines(manifest: dict[str, Any]) -> list[str]:
    """The bundle as ``memguard report`` prints it: each file, and what opens it."""
    directory = str(manifest.get("path", "."))
    used, cap = manifest.get("bytes"), manifest.get("max_bytes")
    lines = [
        f"  memory evidence ({manifest.get('trigger', '?')}) in {directory}: "
        f"{format_bytes(used)} of at most {format_bytes(cap)}"
    ]
    for entry in manifest.get("files", []):
        lines.append(
            f"    {entry.get('name')}  {format_bytes(entry.get('bytes'))}  {entry.get('what', '')}"
        )
        lines.append(f"      open: {_opener(entry, directory)}")
    for entry in manifest.get("left_out", []):
        lines.append(f"    left out: {entry.get('name')} ({entry.get('why', '')})")
    lines += [f"    note: {note}" for note in manifest.get("notes", [])]
    return lines
