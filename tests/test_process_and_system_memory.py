"""Process and system probes, for real: a child process that holds 200 MB."""

import subprocess
import sys
import warnings

import pytest

from keras_memguard.errors import MemGuardWarning
from keras_memguard.probes import process as process_memory
from keras_memguard.probes.process import read_process_memory
from keras_memguard.probes.system import parse_meminfo, read_system_memory

MIB = 2**20
HOLD_200MB = (
    "import sys; block = b'x' * (200 * 2**20); print('ready', flush=True); sys.stdin.read()"
)


@pytest.fixture
def no_child_cache(monkeypatch):
    monkeypatch.setattr(process_memory, "CHILD_REFRESH_S", 0.0)
    monkeypatch.setattr(process_memory, "CHILD_STALE_S", 0.0)  # every read refreshes


def test_process_tree_counts_a_child_holding_200mb(no_child_cache):
    before = read_process_memory()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_200MB], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        during = read_process_memory()
    finally:
        child.communicate("", timeout=30)
    after = read_process_memory()
    assert during.children >= 1
    assert during.tree - before.tree >= 190 * MIB
    assert during.rss - before.rss < 50 * MIB  # the parent itself did not grow
    assert after.tree - before.tree < 50 * MIB  # the child's memory left with it


def test_own_growth_and_peak():
    before = read_process_memory()
    block = b"x" * (100 * MIB)
    during = read_process_memory()
    assert during.rss - before.rss >= 95 * MIB
    assert during.peak_rss >= during.rss - MIB
    del block


def test_child_list_is_cached_between_refreshes(monkeypatch):
    calls = []
    real = process_memory.psutil.Process

    class Counting(real):
        def children(self, recursive=False):
            calls.append(1)
            return super().children(recursive=recursive)

    monkeypatch.setattr(process_memory.psutil, "Process", Counting)
    monkeypatch.setattr(process_memory, "CHILD_REFRESH_S", 60.0)
    process_memory._children.forget()
    for _ in range(5):
        read_process_memory()
    assert len(calls) == 1


def test_unreadable_process_warns_once(monkeypatch):
    def broken(pid):
        raise PermissionError("access denied")

    monkeypatch.setattr(process_memory, "_rss", broken)
    with pytest.warns(MemGuardWarning, match="cannot read process memory"):
        assert read_process_memory() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_process_memory() is None


def test_system_memory_is_consistent():
    mem = read_system_memory()
    assert 0 < mem.available <= mem.total
    assert 0 <= mem.used_percent <= 100
    assert 0 <= mem.swap_used <= max(mem.swap_total, 0) or mem.swap_total == 0


def test_parse_meminfo_real_format():
    text = (
        "MemTotal:       16318508 kB\nMemFree:          529468 kB\n"
        "MemAvailable:    8159252 kB\nBuffers:          412012 kB\n"
        "SwapTotal:       2097148 kB\nSwapFree:        1048574 kB\n"
    )
    mem = parse_meminfo(text)
    assert mem.total == 16318508 * 1024
    assert mem.available == 8159252 * 1024
    assert mem.swap_used == (2097148 - 1048574) * 1024
    assert mem.used_percent == pytest.approx(50.0, abs=0.1)


def test_parse_meminfo_old_kernel_without_memavailable():
    mem = parse_meminfo("MemTotal: 1000 kB\nMemFree: 250 kB\n")
    assert mem.available == 250 * 1024 and mem.swap_used == 0
