"""What one vote across ``jax.distributed`` processes costs (docs/distributed.md).

Run: python benchmarks/bench_multihost_vote.py [--processes 2] [--votes 200]

Starts the processes on 127.0.0.1 (CPU collectives over gloo), and in each times
``--votes`` votes as the guard takes them at a check: ``encode_row``, the all-gather of
every process's row (``JaxProcesses.all_rows``, one ``process_allgather``), then
``decode_rows``. The first vote (it compiles the gather) is reported apart. Printed per
process: the first vote, then the median and 90th percentile of the rest, in ms. The
guard votes at every check with several processes: every 10 batches by default, at
each epoch's end, and at every batch only while memory is within reach of a bound.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time


def process(index: int, count: int, port: str, votes: int) -> None:
    os.environ["KERAS_BACKEND"] = "jax"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", count, index)

    from keras_memguard.backends.jax.distributed import JaxProcesses
    from keras_memguard.guard.distributed import decode_rows, encode_row

    ctx = JaxProcesses(num_workers=count, index=index, is_chief=index == 0)
    seconds = []
    for _ in range(votes + 1):
        start = time.perf_counter()
        decode_rows(ctx.all_rows(encode_row([], False)))
        seconds.append(time.perf_counter() - start)
    if ctx.state.get("broken"):
        print(f"process {index}: the vote could not run (see the warning)", flush=True)
        return
    rest = sorted(seconds[1:])
    print(
        f"process {index}: first vote {seconds[0] * 1e3:.1f} ms; then median "
        f"{statistics.median(rest) * 1e3:.2f} ms, p90 {rest[int(0.9 * len(rest))] * 1e3:.2f} ms "
        f"over {votes} votes",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--votes", type=int, default=200)
    parser.add_argument("--process", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.process is not None:
        process(args.process, args.processes, args.port, args.votes)
        return 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    common = ["--processes", str(args.processes), "--votes", str(args.votes), "--port", port]
    procs = [
        subprocess.Popen([sys.executable, __file__, "--process", str(i), *common])
        for i in range(args.processes)
    ]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return 0 if codes == [0] * len(procs) else 1


if __name__ == "__main__":
    sys.exit(main())
