"""Start-up time of ``memguard report LOGDIR`` and ``memguard doctor``, against a bare
``python -c pass`` measured in the same run (interleaved), each in a fresh process.

Run: python benchmarks/bench_cli.py [--rounds 7]
Goal (issue #15): each command under 1.5 s on the CI machine, with TensorFlow installed.
The log directory is written with the guard's own event writer (20 epochs of the memory
keys), so the benchmark itself imports no framework.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from keras_memguard.guard.tensorboard import EventWriter

KEYS = ("process_tree_mib", "process_tree_peak_mib", "effective_available_mib")


def write_logs(root: str, epochs: int = 20) -> str:
    writer = EventWriter(os.path.join(root, "memory"))
    for epoch in range(epochs):
        for key in KEYS:
            writer.scalar(f"memory/{key}", 500.0 + epoch, epoch)
    writer.close()
    return root


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main(rounds: int = 7) -> None:
    logs = write_logs(tempfile.mkdtemp(prefix="memguard_cli_"))
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "memguard report": [sys.executable, "-m", "keras_memguard", "report", logs],
        "memguard doctor": [sys.executable, "-m", "keras_memguard", "doctor"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            times[name].append(timed(command))
    print(f"{rounds} runs each, interleaved, fresh processes (median s)")
    for name, values in times.items():
        median = statistics.median(values)
        goal = "" if name.startswith("python") else f"  goal < 1.5 s: {median < 1.5}"
        print(f"  {name:<18}{median:>7.3f} s{goal}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    main(parser.parse_args().rounds)
