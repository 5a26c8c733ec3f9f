"""Does the guard stop fast leaks before the OOM killer? (issue #23)

Run: python benchmarks/bench_safety.py [--limit-mib 1280] [--speeds 10,30,100,300,1000]

Each run is ``tests/safety_training.py`` in a fresh Python inside a memory cgroup
nested under this process's own (``tests/memory_cgroup.py``; the benchmark stops
with the reason where none can be made). The issue's table was a 3 GiB container
holding a ~700 MiB process; speeds are scaled by the room the process leaves: N MiB
per batch there is N / 2,372 of the room at train begin here. Guards: no arguments
(``checkpoint_path`` only) and the README's ``max_process_memory="80%"``. A last run
fills a cache at 5% of the room per batch (during epoch 1) up to 85% of the limit, then
levels off.

A sampler thread reads the cgroup's working set (usage less inactive file) at 200 Hz;
the table gives its highest value as a fraction of the limit. Goals: every leak
stopped (no OOM kill), none above 97% of the limit, no halt in the levelling-off case.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
sys.path.insert(0, TESTS)

from memory_cgroup import MemoryCgroup, PeakSampler  # noqa: E402

ISSUE_ROOM_MIB = 3072 - 700
CACHE_FRACTION = 0.05  # of the room per batch: filled during epoch 1 (16 of 20 batches)
GUARDS = {"no arguments": {}, 'max_process_memory="80%"': {"max_process_memory": "80%"}}


def one_run(limit: int, kind: str, fraction: float, guard: dict) -> dict:
    box = MemoryCgroup.create(limit, name="memguard-bench")
    if box is None:
        raise SystemExit(f"no memory cgroup: {MemoryCgroup.why_not}")
    workdir = tempfile.mkdtemp(prefix="memguard_safety_")
    epochs = max(3, math.ceil(1.5 / fraction / 20) + 1) if kind == "leak" else 3
    path = os.pathsep.join([TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "SAFETY_EPOCHS": str(epochs)}
    argv = [sys.executable, os.path.join(TESTS, "safety_training.py"), kind, str(fraction)]
    with box, PeakSampler(box, hz=200) as sampler:
        proc = box.run([*argv, json.dumps(guard), workdir], timeout=900, env=env)
        killed = box.oom_kills()
    result: dict = {"oom_killed": killed > 0 or proc.returncode == -9, "rc": proc.returncode}
    if proc.returncode == 0:
        with open(os.path.join(workdir, "result.json")) as f:
            result.update(json.load(f))
    result["peak_fraction"] = sampler.peak / limit
    result["samples"] = sampler.samples
    return result


def main(limit_mib: int, speeds: list[int]) -> None:
    limit = limit_mib * 2**20
    print(f"container {limit_mib} MiB; speeds scaled by the room (N / {ISSUE_ROOM_MIB})")
    print(f"{'guard':<28}{'MiB/batch (issue)':>18}{'outcome':>22}{'peak/limit':>12}")
    failures = []
    for name, guard in GUARDS.items():
        for speed in speeds if speeds != [0] else []:
            r = one_run(limit, "leak", speed / ISSUE_ROOM_MIB, guard)
            outcome = "OOM-KILLED" if r["oom_killed"] else "stopped" if r.get("halt") else "no halt"
            print(f"{name:<28}{speed:>18}{outcome:>22}{r['peak_fraction']:>12.1%}", flush=True)
            if outcome != "stopped" or r["peak_fraction"] > 0.97:
                failures.append((name, speed, outcome, r["peak_fraction"]))
    r = one_run(limit, "cache", CACHE_FRACTION, {})
    outcome = "OOM-KILLED" if r["oom_killed"] else "HALTED" if r.get("halt") else "ran to the end"
    print(f"{'no arguments, cache to 85%':<28}{'-':>18}{outcome:>22}{r['peak_fraction']:>12.1%}")
    if outcome != "ran to the end":
        failures.append(("cache", "-", outcome, r["peak_fraction"]))
    print(
        "goals (all stopped, none above 97%, no halt on the cache):",
        "met" if not failures else f"NOT met: {failures}",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mib", type=int, default=1280)
    parser.add_argument("--speeds", default="10,30,100,300,1000", help="0: the cache only")
    args = parser.parse_args()
    main(args.limit_mib, [int(s) for s in args.speeds.split(",")])
