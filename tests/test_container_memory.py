"""cgroup v1 and v2 parsing against fixture trees laid out like the real file systems."""

import os
import warnings

import pytest

from keras_memguard.errors import MemGuardWarning
from keras_memguard.probes.cgroup import CgroupReader

MIB = 2**20

V2_STAT = """anon 104857600
file 209715200
kernel 4194304
sock 0
shmem 0
file_mapped 1048576
file_dirty 0
active_anon 94371840
inactive_anon 10485760
active_file 52428800
inactive_file 157286400
unevictable 0
pgfault 123456
"""

V1_STAT = """cache 209715200
rss 104857600
mapped_file 1048576
inactive_anon 10485760
active_anon 94371840
inactive_file 157286400
active_file 52428800
hierarchical_memory_limit 1073741824
total_cache 209715200
total_rss 104857600
total_inactive_file 157286400
total_active_file 52428800
"""

V1_UNLIMITED = "9223372036854771712"


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def v2_tree(tmp_path, leaf="kubepods/pod1/ctr", limits=None, events=True):
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc")
    limits = limits or {}
    parts = leaf.split("/")
    for depth in range(1, len(parts) + 1):
        level = root.joinpath(*parts[:depth])
        write(level / "memory.max", limits.get("/".join(parts[:depth]), "max"))
    leaf_dir = root.joinpath(*parts)
    write(leaf_dir / "memory.current", str(300 * MIB))
    write(leaf_dir / "memory.stat", V2_STAT)
    if events:
        write(
            leaf_dir / "memory.events", "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0"
        )
    proc = tmp_path / "proc_cgroup"
    write(proc, f"0::/{leaf}")
    return CgroupReader(str(root), str(proc))


def v1_tree(tmp_path, leaf="docker/abc", limits=None, mount="memory"):
    root = tmp_path / "cgroup"
    limits = limits or {}
    parts = leaf.split("/")
    write(root / mount / "memory.limit_in_bytes", V1_UNLIMITED)
    write(root / mount / "memory.usage_in_bytes", str(8000 * MIB))
    for depth in range(1, len(parts) + 1):
        level = root.joinpath(mount, *parts[:depth])
        write(level / "memory.limit_in_bytes", limits.get("/".join(parts[:depth]), V1_UNLIMITED))
    leaf_dir = root.joinpath(mount, *parts)
    write(leaf_dir / "memory.usage_in_bytes", str(300 * MIB))
    write(leaf_dir / "memory.stat", V1_STAT)
    write(leaf_dir / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3")
    proc = tmp_path / "proc_cgroup"
    # A hybrid host: v1 controllers plus the unified hierarchy's "0::" line.
    write(proc, f"12:{mount}:/{leaf}\n11:cpu,cpuacct:/{leaf}\n1:name=systemd:/{leaf}\n0::/")
    return CgroupReader(str(root), str(proc))


def test_v2_effective_limit_is_the_smallest_along_the_path(tmp_path):
    reader = v2_tree(
        tmp_path, limits={"kubepods": str(4096 * MIB), "kubepods/pod1": str(1024 * MIB)}
    )
    mem = reader.read()
    assert mem.version == 2
    assert mem.limit == 1024 * MIB
    assert mem.usage == 300 * MIB
    assert mem.working_set == 300 * MIB - 157286400
    assert mem.oom_kills == 1
    assert mem.path.endswith("kubepods/pod1/ctr")


def test_v2_leaf_limit_below_parent(tmp_path):
    reader = v2_tree(
        tmp_path, limits={"kubepods": str(4096 * MIB), "kubepods/pod1/ctr": str(512 * MIB)}
    )
    assert reader.read().limit == 512 * MIB


def test_v2_max_everywhere_means_no_limit(tmp_path):
    assert v2_tree(tmp_path).read().limit is None


def test_v2_inside_a_cgroup_namespace_reads_the_mount_root(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu memory pids")
    write(root / "memory.max", str(2048 * MIB))
    write(root / "memory.current", str(100 * MIB))
    write(root / "memory.stat", V2_STAT)
    write(tmp_path / "proc_cgroup", "0::/")
    mem = CgroupReader(str(root), str(tmp_path / "proc_cgroup")).read()
    assert mem.limit == 2048 * MIB
    assert mem.usage == 100 * MIB
    assert mem.oom_kills is None  # no memory.events here


def test_v2_path_missing_from_the_namespace_falls_back_to_the_root(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "memory")
    write(root / "memory.max", str(777 * MIB))
    write(root / "memory.current", str(10 * MIB))
    write(root / "memory.stat", V2_STAT)
    write(tmp_path / "proc_cgroup", "0::/system.slice/docker-123.scope")
    assert CgroupReader(str(root), str(tmp_path / "proc_cgroup")).read().limit == 777 * MIB


def test_v1_walks_to_the_limited_ancestor(tmp_path):
    reader = v1_tree(
        tmp_path,
        leaf="kubepods/burstable/pod1/ctr",
        limits={"kubepods/burstable/pod1": str(1536 * MIB)},
    )
    mem = reader.read()
    assert mem.version == 1
    assert mem.limit == 1536 * MIB
    assert mem.usage == 300 * MIB
    assert mem.working_set == 300 * MIB - 157286400
    assert mem.oom_kills == 3


def test_v1_unlimited_sentinel_is_no_limit(tmp_path):
    assert v1_tree(tmp_path).read().limit is None


def test_v1_combined_controller_mount(tmp_path):
    reader = v1_tree(tmp_path, mount="memory,memsw", limits={"docker/abc": str(256 * MIB)})
    # /proc/self/cgroup names the controllers as mounted.
    write(tmp_path / "proc_cgroup", "4:memory,memsw:/docker/abc\n0::/")
    assert reader.read().limit == 256 * MIB


def test_no_memory_cgroup_is_none_without_warning(tmp_path):
    write(tmp_path / "proc_cgroup", "0::/")
    (tmp_path / "cgroup").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CgroupReader(str(tmp_path / "cgroup"), str(tmp_path / "proc_cgroup")).read() is None
        assert CgroupReader(str(tmp_path), str(tmp_path / "missing")).read() is None


def test_unreadable_files_warn_once_and_return_none(tmp_path):
    reader = v2_tree(tmp_path)
    current = tmp_path / "cgroup/kubepods/pod1/ctr/memory.current"
    assert reader.read() is not None
    current.unlink()
    current.mkdir()  # reading a directory fails like an unreadable file
    with pytest.warns(MemGuardWarning, match="cannot read cgroup memory files"):
        assert reader.read() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reader.read() is None  # second failure: no second warning


def test_garbage_content_warns(tmp_path):
    reader = v1_tree(tmp_path)
    write(tmp_path / "cgroup/memory/docker/abc/memory.usage_in_bytes", "not a number")
    with pytest.warns(MemGuardWarning):
        assert reader.read() is None


def test_this_machine_reads_without_error():
    from keras_memguard.probes.cgroup import read_container_memory

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mem = read_container_memory()
    if mem is not None:
        assert mem.usage >= mem.working_set >= 0
        assert mem.limit is None or mem.limit > 0
