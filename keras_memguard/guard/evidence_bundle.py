"""A halt's evidence bundle on disk: its files under a size cap, and its manifest.

A bundle is one directory (``<log_dir>/memory_evidence/``) holding the files of one
halt and ``evidence.json``, the manifest: each file with its size, what it holds and
the command that opens it, the files left out for the cap, what triggered it. It is
written into a scratch directory and renamed over the previous bundle, so a reader
never sees half of one. Files are added in order of importance; one that would take
the bundle over its cap is left out (and named in the manifest), so the cap holds for
the directory as a whole, manifest included. Nothing here imports a framework:
``memguard report`` reads bundles with :func:`read_bundle`.

Example:
    >>> bundle = Bundle("logs/memory_evidence", max_bytes=64 * 2**20)
    >>> bundle.add_text("summary.txt", "keras-memguard: stopping training ...", "the halt", "cat")
    True
    >>> bundle.close({"trigger": "halt"})
    'logs/memory_evidence'
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DIRECTORY", "MANIFEST", "MANIFEST_RESERVE", "Bundle", "find_bundles", "read_bundle"]

DIRECTORY = "memory_evidence"
MANIFEST = "evidence.json"
# Bytes kept back under the cap for the manifest itself (a dozen entries: ~3 KiB).
MANIFEST_RESERVE = 16 * 1024


@dataclass
class Bundle:
    """One halt's files, written under ``max_bytes`` in total, then renamed into place.

    Args:
        directory: where the bundle ends up (a previous bundle there is replaced).
        max_bytes: the cap on the directory's total size, manifest included.
    """

    directory: str
    max_bytes: int
    files: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[dict[str, Any]] = field(default_factory=list)
    used: int = 0
    scratch: str = ""

    def __post_init__(self) -> None:
        self.scratch = f"{self.directory}.partial-{os.getpid()}"
        shutil.rmtree(self.scratch, ignore_errors=True)
        os.makedirs(self.scratch)

    @property
    def budget(self) -> int:
        """Bytes still free for files under the cap (the manifest's reserve kept back)."""
        return max(0, self.max_bytes - MANIFEST_RESERVE - self.used)

    def _keep(self, name: str, size: int, what: str, opens_with: str) -> bool:
        if size > self.budget:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.scratch, name))
            why = f"{size:,} bytes, over the {self.budget:,} left under the cap"
            self.left_out.append({"name": name, "bytes": size, "why": why})
            return False
        self.used += size
        self.files.append({"name": name, "bytes": size, "what": what, "open": opens_with})
        return True

    def add_text(self, name: str, text: str, what: str, opens_with: str) -> bool:
        """Writes ``text`` as ``name`` if it fits the cap; returns whether it did."""
        data = text.encode()
        if len(data) <= self.budget:
            with open(os.path.join(self.scratch, name), "wb") as f:
                f.write(data)
        return self._keep(name, len(data), what, opens_with)

    def add_json(self, name: str, value: Any, what: str) -> bool:
        """Writes ``value`` as indented JSON (``python -m json.tool`` opens it)."""
        text = json.dumps(value, indent=2, default=str)
        return self.add_text(name, text, what, f"python -m json.tool {name}")

    def add_written(self, name: str, what: str, opens_with: str) -> bool:
        """Keeps a file something else wrote into :attr:`scratch` if it fits the cap."""
        path = os.path.join(self.scratch, name)
        if not os.path.isfile(path):
            return False
        return self._keep(name, os.path.getsize(path), what, opens_with)

    def close(self, meta: dict[str, Any]) -> str:
        """Writes the manifest (``meta`` plus the files), renames the bundle into place."""
        manifest = {
            **meta,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "max_bytes": self.max_bytes,
            "bytes": self.used,
            "files": self.files,
            "left_out": self.left_out,
        }
        for name in os.listdir(self.scratch):  # anything a framework wrote and not kept
            if name not in {entry["name"] for entry in self.files}:
                os.remove(os.path.join(self.scratch, name))
        with open(os.path.join(self.scratch, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, default=str)
        shutil.rmtree(self.directory, ignore_errors=True)
        os.replace(self.scratch, self.directory)
        return self.directory

    def abandon(self) -> None:
        """Removes the scratch directory (a bundle that failed half way)."""
        shutil.rmtree(self.scratch, ignore_errors=True)


def read_bundle(directory: str) -> dict[str, Any] | None:
    """A bundle's manifest, with ``"path"`` set; ``None`` where there is none."""
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            manifest: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    manifest["path"] = directory
    return manifest


def find_bundles(log_dir: str) -> list[str]:
    """Bundle directories under ``log_dir`` (``memory_evidence*`` with a manifest)."""
    found = []
    for root, dirs, files in os.walk(log_dir):
        if MANIFEST in files and os.path.basename(root).startswith(DIRECTORY):
            found.append(root)
            dirs.clear()
    return sorted(found)
