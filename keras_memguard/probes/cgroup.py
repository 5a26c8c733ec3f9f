"""Memory of the container (Linux control group) this process runs in.

Docker, Kubernetes and systemd bound memory with cgroups; the OOM killer acts on the
cgroup's limit, not on the machine's RAM. This module finds this process's memory
cgroup (v2, or v1 including hybrid set-ups), walks from it up to the root of the
hierarchy, and takes the smallest limit on the way as the effective one.

``usage`` counts page cache too; ``working_set`` (usage minus inactive file pages) is
what the kubelet compares against the limit, and what the guard uses.

Example:
    >>> mem = CgroupReader().read()   # None outside any memory cgroup
    >>> mem is None or mem.usage >= mem.working_set
    True
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from keras_memguard.errors import warn_once
from keras_memguard.probes.procfs import find_key, read_int, read_text

__all__ = [
    "LIMIT_REFRESH_S",
    "STAT_REFRESH_S",
    "CgroupReader",
    "ContainerMemory",
    "read_container_memory",
]

# Limits and OOM-kill counts change rarely; they are read again after this many seconds.
LIMIT_REFRESH_S = 5.0
# memory.stat is long to read and parse; its inactive-file figure is refreshed each second
# (usage itself is read on every call).
STAT_REFRESH_S = 1.0
# cgroup v1 writes "no limit" as the largest page-aligned 63-bit number.
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class ContainerMemory:
    """A memory cgroup's figures in bytes.

    Attributes:
        version: 1 or 2.
        path: the cgroup directory read.
        limit: the effective (smallest) limit along the path, ``None`` when unlimited.
        usage: memory charged to the cgroup, page cache included.
        working_set: ``usage`` minus inactive file pages (reclaimable cache).
        oom_kills: processes the OOM killer has killed in this cgroup, if reported.
    """

    version: int
    path: str
    limit: int | None
    usage: int
    working_set: int
    oom_kills: int | None


@dataclass(frozen=True)
class _Layout:
    version: int
    leaf: str
    limit_files: tuple[str, ...]  # from the leaf up to the hierarchy's root


def _relative_path(proc_cgroup_text: str, version: int) -> str | None:
    for line in proc_cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if version == 1 and "memory" in controllers.split(","):
            return path
        if version == 2 and parts[0] == "0" and controllers == "":
            return path
    return None


def _v1_mount(root: str) -> str | None:
    direct = os.path.join(root, "memory")
    if os.path.isdir(direct):
        return direct
    try:
        names = os.listdir(root)
    except OSError:
        return None
    for name in names:
        if "memory" in name.split(","):
            return os.path.join(root, name)
    return None


def _walk(mount: str, relative: str, limit_name: str) -> tuple[str, tuple[str, ...]]:
    leaf = os.path.normpath(os.path.join(mount, relative.lstrip("/")))
    if not os.path.isdir(leaf):
        # Inside a cgroup namespace the container's own cgroup is mounted at the root.
        leaf = mount
    files = []
    current = leaf
    while True:
        candidate = os.path.join(current, limit_name)
        if os.path.exists(candidate):
            files.append(candidate)
        if os.path.normpath(current) == os.path.normpath(mount):
            break
        current = os.path.dirname(current)
    return leaf, tuple(files)


def _discover(root: str, proc_cgroup: str) -> _Layout | None:
    try:
        text = read_text(proc_cgroup)
    except OSError:
        return None
    v1_path = _relative_path(text, 1)
    if v1_path is not None:
        mount = _v1_mount(root)
        if mount is not None:
            leaf, files = _walk(mount, v1_path, "memory.limit_in_bytes")
            if os.path.exists(os.path.join(leaf, "memory.usage_in_bytes")):
                return _Layout(1, leaf, files)
    v2_path = _relative_path(text, 2)
    if v2_path is not None and os.path.exists(os.path.join(root, "cgroup.controllers")):
        leaf, files = _walk(root, v2_path, "memory.max")
        if os.path.exists(os.path.join(leaf, "memory.current")):
            return _Layout(2, leaf, files)
    return None


def _read_oom_kills(layout: _Layout) -> int | None:
    name = "memory.oom_control" if layout.version == 1 else "memory.events"
    try:
        return find_key(read_text(os.path.join(layout.leaf, name)), "oom_kill")
    except (OSError, ValueError):
        return None


class CgroupReader:
    """Reads one process's memory cgroup; discovery happens once, on first use.

    Args:
        root: where the cgroup file systems are mounted. Defaults to `/sys/fs/cgroup`.
        proc_cgroup: the file that names this process's cgroups.
            Defaults to `/proc/self/cgroup`.

    Example:
        >>> CgroupReader("/tmp/fixture", "/tmp/fixture/proc_cgroup").read()
    """

    def __init__(self, root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup"):
        self.root = root
        self.proc_cgroup = proc_cgroup
        self._layout: _Layout | None = None
        self._discovered = False
        self._limit: int | None = None
        self._oom_kills: int | None = None
        self._slow_read_at = float("-inf")
        self._inactive = 0
        self._stat_read_at = float("-inf")

    def _slow_figures(self, layout: _Layout) -> tuple[int | None, int | None]:
        """The effective limit and OOM-kill count, read again every ``LIMIT_REFRESH_S``."""
        now = time.monotonic()
        if now - self._slow_read_at < LIMIT_REFRESH_S:
            return self._limit, self._oom_kills
        limits = []
        for path in layout.limit_files:
            value = read_int(path)
            if value is not None and not (layout.version == 1 and value >= _V1_UNLIMITED):
                limits.append(value)
        self._limit = min(limits) if limits else None
        self._oom_kills = _read_oom_kills(layout)
        self._slow_read_at = now
        return self._limit, self._oom_kills

    def _inactive_file(self, layout: _Layout) -> int:
        """Inactive file pages from ``memory.stat``, read again every ``STAT_REFRESH_S``."""
        now = time.monotonic()
        if now - self._stat_read_at >= STAT_REFRESH_S:
            stat = read_text(os.path.join(layout.leaf, "memory.stat"))
            key = "total_inactive_file" if layout.version == 1 else "inactive_file"
            self._inactive = find_key(stat, key) or 0
            self._stat_read_at = now
        return self._inactive

    def read(self) -> ContainerMemory | None:
        """Returns the cgroup's figures; ``None`` outside a memory cgroup or on error."""
        if not self._discovered:
            self._layout = _discover(self.root, self.proc_cgroup)
            self._discovered = True
        layout = self._layout
        if layout is None:
            return None
        v1 = layout.version == 1
        try:
            usage = read_int(
                os.path.join(layout.leaf, "memory.usage_in_bytes" if v1 else "memory.current")
            )
            limit, oom_kills = self._slow_figures(layout)
            inactive = self._inactive_file(layout)
        except (OSError, ValueError) as err:
            warn_once(
                "container-memory",
                f"keras-memguard cannot read cgroup memory files under {layout.leaf}: {err}",
            )
            return None
        usage = usage or 0
        return ContainerMemory(
            version=layout.version,
            path=layout.leaf,
            limit=limit,
            usage=usage,
            working_set=max(0, usage - inactive),
            oom_kills=oom_kills,
        )


_default_reader = CgroupReader()


def read_container_memory() -> ContainerMemory | None:
    """Reads this process's memory cgroup (see :class:`CgroupReader`)."""
    return _default_reader.read()
