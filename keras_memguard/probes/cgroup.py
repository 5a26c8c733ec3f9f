"""Memory of the container (Linux control group) this process runs in.

Docker, Kubernetes, SLURM and systemd bound memory with cgroups; the OOM killer acts on
the cgroup's limit, not on the machine's RAM. This module finds this process's memory
cgroup (v2, or v1 including hybrid set-ups), walks from it up to the root of the
hierarchy, and takes the smallest limit on the way as the one *in force*.

Usage is read **at the cgroup whose limit is in force**, not at this process's own
(leaf) cgroup: under a SLURM job or a systemd slice the limit sits on an ancestor that
sibling steps or services share, and the leaf's usage would overstate what is left.
The leaf's own charge is kept beside it (``leaf_usage``).

``usage`` counts page cache too; ``working_set`` (usage minus inactive file pages) is
what the kubelet compares against the limit, and what the guard uses. ``usage`` is read
on every call; ``memory.stat`` (long for the kernel to produce: ~70 µs on cgroup v1) is
read *with it* whenever usage has moved more than ``STAT_DRIFT`` since the last pair,
whenever less than ``NEAR_LIMIT`` of the limit is left, and at least every
``STAT_REFRESH_S``. So a cached ``inactive_file`` is never subtracted from a usage figure
that has moved on (page cache reclaimed, usage fallen): the working set is exact near
the limit and within ``STAT_DRIFT`` elsewhere.

A file that cannot be read warns once, naming it; the reading is then ``None``, so
fractions such as ``"80%"`` resolve against the machine's RAM instead
(:func:`read_error` says so, and ``memguard doctor`` shows it).

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
from keras_memguard.probes.procfs import find_key, read_text

__all__ = [
    "LIMIT_REFRESH_S",
    "NEAR_LIMIT",
    "STAT_DRIFT",
    "STAT_REFRESH_S",
    "CgroupReader",
    "ContainerMemory",
    "read_container_memory",
    "read_error",
    "read_oom_kills",
]

# Limits and OOM-kill counts change rarely; they are read again after this many seconds.
LIMIT_REFRESH_S = 5.0
# memory.stat is read again with usage after this long, or once usage moved this much,
# or on every call when less than NEAR_LIMIT of the limit is left.
STAT_REFRESH_S = 1.0
STAT_DRIFT = 32 * 2**20
NEAR_LIMIT = 0.25
# cgroup v1 writes "no limit" as the largest page-aligned 63-bit number.
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class ContainerMemory:
    """A memory cgroup's figures in bytes.

    Attributes:
        version: 1 or 2.
        path: the cgroup whose limit is in force (this process's own when unlimited);
            ``usage`` and ``working_set`` are read there.
        limit: the effective (smallest) limit along the path, ``None`` when unlimited.
        usage: memory charged to ``path``, page cache included.
        working_set: ``usage`` minus inactive file pages (reclaimable cache).
        oom_kills: processes the OOM killer has killed in ``path``, if reported.
        leaf: this process's own cgroup.
        leaf_usage: memory charged to ``leaf`` (equals ``usage`` when ``leaf == path``).
    """

    version: int
    path: str
    limit: int | None
    usage: int
    working_set: int
    oom_kills: int | None
    leaf: str = ""
    leaf_usage: int | None = None


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


def _read_oom_kills(version: int, directory: str) -> int | None:
    name = "memory.oom_control" if version == 1 else "memory.events"
    try:
        return find_key(read_text(os.path.join(directory, name)), "oom_kill")
    except (OSError, ValueError):
        return None


def read_oom_kills(path: str, version: int) -> int | None:
    """The OOM-kill count of the cgroup at ``path`` now, ``None`` when it cannot be read.

    Example:
        >>> read_oom_kills("/sys/fs/cgroup/memory/docker/abc", 1)
        0
    """
    return _read_oom_kills(version, path)


class _ReadError(Exception):
    """A cgroup file that exists but cannot be read or parsed."""

    def __init__(self, path: str, err: Exception) -> None:
        super().__init__(f"{path}: {err}")
        self.path = path
        self.reason = err


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
        self.error: str | None = None  # the last read failure, for `memguard doctor`
        self._layout: _Layout | None = None
        self._discovered = False
        self._limit: int | None = None
        self._in_force = ""
        self._oom_kills: int | None = None
        self._slow_read_at = float("-inf")
        # (cgroup, usage, inactive_file, when) of the last memory.stat read
        self._pair: tuple[str, int, int, float] | None = None

    def _read(self, path: str) -> str:
        try:
            return read_text(path)
        except OSError as err:
            raise _ReadError(path, err) from None

    def _int(self, path: str) -> int | None:
        text = self._read(path).strip()
        try:
            return None if text == "max" else int(text)
        except ValueError as err:
            raise _ReadError(path, err) from None

    def _slow_figures(self, layout: _Layout) -> tuple[int | None, str, int | None]:
        """The limit in force, its cgroup, and its OOM-kill count (every LIMIT_REFRESH_S)."""
        now = time.monotonic()
        if now - self._slow_read_at < LIMIT_REFRESH_S:
            return self._limit, self._in_force, self._oom_kills
        best: tuple[int, str] | None = None
        for path in layout.limit_files:  # from the leaf up: the nearest wins a tie
            value = self._int(path)
            if value is None or (layout.version == 1 and value >= _V1_UNLIMITED):
                continue
            if best is None or value < best[0]:
                best = (value, os.path.dirname(path))
        self._limit, self._in_force = (best[0], best[1]) if best else (None, layout.leaf)
        self._oom_kills = _read_oom_kills(layout.version, self._in_force)
        self._slow_read_at = now
        return self._limit, self._in_force, self._oom_kills

    def _usage(self, version: int, directory: str, limit: int | None) -> tuple[int, int]:
        """Usage and working set of one cgroup (``memory.stat`` re-read as it must be)."""
        name = "memory.usage_in_bytes" if version == 1 else "memory.current"
        usage = self._int(os.path.join(directory, name)) or 0
        now = time.monotonic()
        pair = self._pair
        if (
            pair is None
            or pair[0] != directory
            or abs(usage - pair[1]) > STAT_DRIFT
            or now - pair[3] >= STAT_REFRESH_S
            or (limit is not None and limit - usage < NEAR_LIMIT * limit)
        ):
            stat_path = os.path.join(directory, "memory.stat")
            key = "total_inactive_file" if version == 1 else "inactive_file"
            try:
                inactive = find_key(self._read(stat_path), key) or 0
            except ValueError as err:
                raise _ReadError(stat_path, err) from None
            pair = self._pair = (directory, usage, inactive, now)
        return usage, max(0, usage - pair[2])

    def read(self) -> ContainerMemory | None:
        """Returns the cgroup's figures; ``None`` outside a memory cgroup or on error."""
        if not self._discovered:
            self._layout = _discover(self.root, self.proc_cgroup)
            self._discovered = True
        layout = self._layout
        if layout is None:
            return None
        try:
            limit, in_force, oom_kills = self._slow_figures(layout)
            usage, working_set = self._usage(layout.version, in_force, limit)
            leaf_usage = usage
            if os.path.normpath(in_force) != os.path.normpath(layout.leaf):
                name = "memory.usage_in_bytes" if layout.version == 1 else "memory.current"
                leaf_usage = self._int(os.path.join(layout.leaf, name)) or 0
        except _ReadError as err:
            self.error = (
                f"cannot read {err.path} ({err.reason}); the container's figures "
                "are left out, so the effective limit falls back to the machine's RAM and "
                "a fraction such as '80%' means 80% of host RAM"
            )
            warn_once("container-memory", f"keras-memguard {self.error}.")
            return None
        self.error = None
        return ContainerMemory(
            version=layout.version,
            path=in_force,
            limit=limit,
            usage=usage,
            working_set=working_set,
            oom_kills=oom_kills,
            leaf=layout.leaf,
            leaf_usage=leaf_usage,
        )


_default_reader = CgroupReader()


def read_container_memory() -> ContainerMemory | None:
    """Reads this process's memory cgroup (see :class:`CgroupReader`)."""
    return _default_reader.read()


def read_error() -> str | None:
    """Why the last reading of this process's cgroup failed, or ``None``.

    Example:
        >>> read_error() is None   # readable (or no memory cgroup at all)
        True
    """
    return _default_reader.error
