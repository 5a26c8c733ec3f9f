"""Cost of keras_memguard.snapshot() (host + container) beside a bare psutil call.

Run: python benchmarks/bench_snapshot.py
Both are timed interleaved in one process, so machine noise hits them alike.
Goal: snapshot(gpus=False) under 100 µs on the project's 2-core machines.
"""

from __future__ import annotations

import statistics
import time

import psutil

from keras_memguard import snapshot


def per_call_us(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main(rounds: int = 15, calls: int = 2000) -> None:
    def bare() -> object:
        return psutil.Process().memory_info()

    def ours() -> object:
        return snapshot(gpus=False)

    def ours_with_gpus() -> object:
        return snapshot()

    results: dict[str, list[float]] = {"psutil": [], "snapshot": [], "snapshot+gpus": []}
    for _ in range(rounds):
        results["psutil"].append(per_call_us(bare, calls))
        results["snapshot"].append(per_call_us(ours, calls))
        results["snapshot+gpus"].append(per_call_us(ours_with_gpus, calls))
    base = statistics.median(results["psutil"])
    print(f"{'call':<38}{'median µs':>10}{'ratio':>8}")
    labels = {
        "psutil": "psutil.Process().memory_info()",
        "snapshot": "snapshot(gpus=False)",
        "snapshot+gpus": "snapshot() (NVML + TF allocator)",
    }
    for key, label in labels.items():
        median = statistics.median(results[key])
        print(f"{label:<38}{median:>10.1f}{median / base:>8.2f}")
    goal = statistics.median(results["snapshot"])
    print(f"goal: snapshot(gpus=False) < 100 µs -> {'met' if goal < 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
