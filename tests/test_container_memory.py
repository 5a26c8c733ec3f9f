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
    """Each level charges 300 MiB more than the one below it (its other children)."""
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc")
    limits = limits or {}
    parts = leaf.split("/")
    for depth in range(1, len(parts) + 1):
        level = root.joinpath(*parts[:depth])
        write(level / "memory.max", limits.get("/".join(parts[:depth]), "max"))
        write(level / "memory.current", str(300 * MIB * (len(parts) - depth + 1)))
        write(level / "memory.stat", V2_STAT)
        if events:
            kills = len(parts) - depth + 1
            write(level / "memory.events", f"low 0\nhigh 0\nmax 12\noom 2\noom_kill {kills}")
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
        write(level / "memory.usage_in_bytes", str(300 * MIB * (len(parts) - depth + 1)))
        write(level / "memory.stat", V1_STAT)
        write(level / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3")
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
    # Usage where the limit is in force (pod1: this container and its siblings).
    assert mem.path.endswith("kubepods/pod1")
    assert mem.usage == 600 * MIB
    assert mem.working_set == 600 * MIB - 157286400
    assert mem.oom_kills == 2  # pod1's count
    assert mem.leaf.endswith("kubepods/pod1/ctr") and mem.leaf_usage == 300 * MIB


def test_v2_leaf_limit_below_parent(tmp_path):
    reader = v2_tree(
        tmp_path, limits={"kubepods": str(4096 * MIB), "kubepods/pod1/ctr": str(512 * MIB)}
    )
    mem = reader.read()
    assert mem.limit == 512 * MIB
    assert mem.usage == mem.leaf_usage == 300 * MIB  # the leaf's own limit is in force


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
    assert mem.path.endswith("kubepods/burstable/pod1")
    assert mem.usage == 600 * MIB and mem.leaf_usage == 300 * MIB
    assert mem.working_set == 600 * MIB - 157286400
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
    with pytest.warns(MemGuardWarning, match="cannot read .*memory.current") as record:
        assert reader.read() is None
    message = str(record[0].message)
    assert str(current) in message  # names the file
    assert "'80%' means 80% of host RAM" in message  # and what the bound now means
    assert reader.error is not None and str(current) in reader.error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reader.read() is None  # second failure: no second warning


def test_garbage_content_warns(tmp_path):
    reader = v1_tree(tmp_path)
    write(tmp_path / "cgroup/memory/docker/abc/memory.usage_in_bytes", "not a number")
    with pytest.warns(MemGuardWarning):
        assert reader.read() is None


def test_slurm_like_tree_limit_on_the_job_usage_of_the_whole_job(tmp_path):
    # SLURM: the job cgroup holds the limit; this step is one of several steps under it.
    reader = v2_tree(
        tmp_path,
        leaf="system.slice/slurmstepd.scope/job_42/step_0/user/task_0",
        limits={"system.slice/slurmstepd.scope/job_42": str(2048 * MIB)},
    )
    mem = reader.read()
    assert mem.path.endswith("job_42") and mem.limit == 2048 * MIB
    assert mem.usage == 4 * 300 * MIB  # the job's charge, siblings included
    assert mem.leaf_usage == 300 * MIB
    # What is left is the job's limit minus the job's working set, not the task's.
    assert mem.limit - mem.working_set == 2048 * MIB - (1200 * MIB - 157286400)


def test_working_set_never_mixes_a_cached_inactive_file_with_fresh_usage(tmp_path):
    reader = v2_tree(tmp_path)
    leaf = tmp_path / "cgroup/kubepods/pod1/ctr"
    assert reader.read().working_set == 300 * MIB - 157286400
    # Page cache reclaimed: usage falls and inactive_file with it, at the same moment.
    write(leaf / "memory.current", str(200 * MIB))
    write(leaf / "memory.stat", V2_STAT.replace("inactive_file 157286400", "inactive_file 0"))
    mem = reader.read()
    assert mem.usage == 200 * MIB and mem.working_set == 200 * MIB


def test_near_the_limit_the_working_set_is_exact_on_every_read(tmp_path):
    reader = v2_tree(tmp_path, limits={"kubepods/pod1/ctr": str(350 * MIB)})  # 300 used
    leaf = tmp_path / "cgroup/kubepods/pod1/ctr"
    assert reader.read().working_set == 300 * MIB - 157286400
    # Cache turns active at once (usage unchanged): 50 MiB from the limit, so read now.
    write(leaf / "memory.stat", V2_STAT.replace("inactive_file 157286400", "inactive_file 0"))
    assert reader.read().working_set == 300 * MIB


def test_far_from_the_limit_a_small_drift_reuses_the_last_stat(tmp_path):
    reader = v2_tree(tmp_path)  # no limit
    leaf = tmp_path / "cgroup/kubepods/pod1/ctr"
    reader.read()
    write(leaf / "memory.current", str(310 * MIB))  # 10 MiB more anonymous memory
    (leaf / "memory.stat").unlink()  # not read again: usage moved less than STAT_DRIFT
    assert reader.read().working_set == 310 * MIB - 157286400


def _own_memory_cgroup():
    """This process's memory cgroup directory, found independently of the reader."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for _, controllers, path in lines:
        directory = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
        if "memory" in controllers.split(",") and os.path.isdir(directory):
            return directory
    for number, _controllers, path in lines:
        directory = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        if number == "0" and os.path.exists(os.path.join(directory, "memory.current")):
            return directory
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/cgroup"), reason="Linux only")
def test_this_machine_reads_without_error():
    reader = CgroupReader()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mem = reader.read()
    assert reader.error is None
    expected = _own_memory_cgroup()
    assert (mem is None) == (expected is None)
    if mem is not None:  # this machine has a memory cgroup (both CI and dev machines do)
        assert os.path.samefile(mem.leaf, expected)
        assert mem.usage >= mem.working_set >= 0
        assert mem.limit is None or mem.limit > 0


def test_snapshot_shows_the_own_cgroup_charge_beside_the_shared_one(tmp_path, monkeypatch):
    # The limit sits on the pod (shared with siblings); this process's own cgroup is
    # the container: both charges reach the metrics, under their own keys.
    from keras_memguard import snapshot
    from keras_memguard.probes import cgroup

    reader = v1_tree(
        tmp_path,
        leaf="kubepods/burstable/pod1/ctr",
        limits={"kubepods/burstable/pod1": str(1536 * MIB)},
    )
    monkeypatch.setattr(cgroup, "_default_reader", reader)
    metrics = snapshot(gpus=False).metrics()
    assert metrics["container_usage_mib"] == 600
    assert metrics["container_own_usage_mib"] == 300
    assert metrics["container_limit_mib"] == 1536
