"""Multi-host JAX training on this machine, guarded, with a stop that every process takes.

Starts two `jax.distributed` processes on 127.0.0.1 (CPU collectives over gloo), each
fitting the same model under `keras.distribution.DataParallel` across both. Process 1
leaks memory; its guard's vote stops *both* processes at the same step, process 0
keeps the checkpoint, and neither hangs. On a real cluster, run the `--process` form
on each host with your scheduler's coordinator address, process count and index.

Run:  python examples/multihost_jax.py [--work-dir multihost_demo]
      [--leak-mib 0,8] (a healthy fit, then a leaking one) [--sharded 8] (then a fit
      under ModelParallel, kernels split across the processes: it stops together,
      and says why no checkpoint can be written)
Each process writes what its guard did to <work-dir>/result<index>.json, and its
memory run to <work-dir>/logs/memory_p<index> (`memguard report <work-dir>/logs`).
Needs: pip install jax
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys


def process(
    index: int, count: int, port: str, work_dir: str, leaks: list[int], epochs: int, sharded: int
) -> None:
    """One process: a fit per entry of ``leaks`` (MiB process 1 leaks per batch) under
    ``DataParallel``, then (``sharded`` > 0) one under ``ModelParallel`` leaking that."""
    os.environ["KERAS_BACKEND"] = "jax"
    import jax

    # Cross-process collectives on CPU (GPUs and TPUs have their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np

    # Before any other JAX call. keras.distribution.initialize takes no heartbeat timeout
    # (and seeds every process alike): call jax.distributed.initialize yourself to set
    # one (docs/distributed.md).
    jax.distributed.initialize(f"127.0.0.1:{port}", count, index, heartbeat_timeout_seconds=30)
    keras.utils.set_random_seed(0)  # the same initial weights on every process
    devices = keras.distribution.list_devices()
    distribution = keras.distribution.DataParallel(devices=devices)
    distribution.auto_shard_dataset = False  # each process feeds its own part of the data
    keras.distribution.set_distribution(distribution)
    x = np.random.default_rng(index).random((320, 16), dtype=np.float32)  # its own part
    model = new_model()  # one model, fitted once per entry of `leaks` (compiled once)
    results = [
        guarded_fit(model, x, index, work_dir, fit, leak_mib, epochs)
        for fit, leak_mib in enumerate(leaks)
    ]
    if sharded:
        # Each Dense kernel split across the processes: the vote works, the save cannot.
        mesh = keras.distribution.DeviceMesh((1, count), ["batch", "model"], devices)
        layout = keras.distribution.LayoutMap(mesh)
        layout[".*kernel"] = (None, "model")
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(layout_map=layout, auto_shard_dataset=False)
        )
        x = np.random.default_rng(0).random((320, 16), dtype=np.float32)  # one batch axis
        fit = len(leaks)
        results.append(guarded_fit(new_model(), x, index, work_dir, fit, sharded, epochs))
    with open(os.path.join(work_dir, f"result{index}.json"), "w") as f:
        json.dump({"index": index, "fits": results}, f)


def new_model():
    import keras

    model = keras.Sequential(
        [
            keras.layers.Input((16,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(2),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def guarded_fit(model, x, index, work_dir, fit, leak_mib, epochs) -> dict:
    """One guarded fit of ``model``; process 1 leaks ``leak_mib`` MiB a batch."""
    from keras_memguard import MemGuardCallback, snapshot

    Leak, AtHalt = callbacks()
    before = int(model.optimizer.iterations.numpy())
    # The leaking fit gets a tight bound, so that the demo halts soon.
    bound = (snapshot().process_tree or 0) + 300 * 2**20 if leak_mib else "90%"
    guard = MemGuardCallback(
        log_dir=os.path.join(work_dir, "logs"),
        max_process_memory=bound,
        checkpoint_path=os.path.join(work_dir, f"guard{fit}.keras"),
    )
    leak, at_halt = Leak(leak_mib if index == 1 else 0), AtHalt(guard)
    y = (x.sum(1) > 8).astype("int32")
    history = model.fit(
        x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[leak, guard, at_halt]
    )
    leak.held.clear()
    halt = guard.summary.halts[0] if guard.summary.halts else None
    print(
        f"process {index}, fit {fit}: " + (halt.describe() if halt else "finished without a halt"),
        flush=True,
    )
    iterations = int(model.optimizer.iterations.numpy())
    return {
        "halt": None
        if halt is None
        else {
            "metric": halt.metric,
            "crossed_by": halt.crossed_by,
            "epoch": halt.epoch,
            "batch": halt.batch,
            "checkpoint": halt.checkpoint,
        },
        "epochs_run": len(history.history["loss"]),
        "votes": guard.summary.votes,
        "iterations": iterations,  # every fit's of this model
        "batches": iterations - before,
        "weights_at_halt": at_halt.weights,  # what the checkpoint should hold
    }


def callbacks() -> tuple[type, type]:
    """``Leak`` (holds ``mib`` MiB more at each batch's end) and ``AtHalt`` (keeps the
    weights as the guard saved them where it saved: Keras still runs the batch it was
    about to)."""
    import keras
    import numpy as np

    class Leak(keras.callbacks.Callback):
        def __init__(self, mib):
            super().__init__()
            self.mib, self.held = mib, []

        def on_train_batch_end(self, batch, logs=None):
            if self.mib:
                self.held.append(np.ones(self.mib * 2**18, np.float32))

    class AtHalt(keras.callbacks.Callback):
        def __init__(self, guard):
            super().__init__()
            self.guard, self.weights = guard, None

        def on_train_batch_begin(self, batch, logs=None):
            halts = self.guard.summary.halts
            if halts and halts[0].checkpoint and self.weights is None:
                self.weights = [w.tolist() for w in self.model.get_weights()]

    return Leak, AtHalt


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="multihost_demo")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--process", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", help=argparse.SUPPRESS)
    parser.add_argument(
        "--leak-mib",
        default="8",
        help="MiB process 1 leaks per batch, one fit per comma-separated value (0: healthy)",
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--sharded",
        type=int,
        default=0,
        help="then a ModelParallel fit (kernels split across processes) leaking this many MiB",
    )
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    leaks = [int(v) for v in args.leak_mib.split(",")]
    if args.process is not None:
        process(
            args.process, args.processes, args.port, args.work_dir, leaks, args.epochs, args.sharded
        )
        return 0
    os.makedirs(args.work_dir, exist_ok=True)
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                *("--process", str(i), "--processes", str(args.processes)),
                *("--port", port, "--work-dir", args.work_dir, "--leak-mib", args.leak_mib),
                *("--epochs", str(args.epochs), "--sharded", str(args.sharded)),
            ],
            start_new_session=True,
        )
        for i in range(args.processes)
    ]
    codes: list[int | None] = [None] * len(procs)
    try:
        codes = [p.wait(timeout=args.timeout) for p in procs]
    except subprocess.TimeoutExpired:
        print(f"a process still ran after {args.timeout:.0f} s (a hang): killed", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:  # a hang ends here, never in a stuck terminal
                p.kill()
                p.wait()
    print(
        f"process exit codes: {codes}; memguard report "
        f"{os.path.abspath(os.path.join(args.work_dir, 'logs'))}"
    )
    return 0 if codes == [0] * len(procs) else 1


if __name__ == "__main__":
    sys.exit(main())
