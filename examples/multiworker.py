"""Two-worker training on this machine, guarded, with a stop that both workers take.

Starts two MultiWorkerMirroredStrategy workers on 127.0.0.1 (tf_keras, since Keras 3
cannot yet fit under that strategy: keras-team/keras#20585). Worker 1 leaks memory;
its guard's vote stops *both* workers at the same step, the chief saves the model,
and neither crashes. On a real cluster, run the `--worker` form on each machine with
TF_CONFIG set by your scheduler.

Run:  python examples/multiworker.py [--work-dir multiworker_demo]
Each worker also writes what its guard did to <work-dir>/result<index>.json.
Needs: pip install 'keras-memguard[legacy]'
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys


def worker(index: int, ports: list[str], work_dir: str, leak_mib: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from keras_memguard import snapshot
    from keras_memguard.guard.legacy import LegacyMemGuardCallback

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras = tf.keras
    rng = np.random.default_rng(0)
    x = rng.random((2048, 16), dtype=np.float32)
    y = (x.sum(1) > 8).astype("int32")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).repeat().with_options(options)
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.layers.Input((16,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(2, activation="softmax"),
            ]
        )
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    held = []

    class Leak(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if leak_mib:
                held.append(b"x" * (leak_mib * 2**20))

    guard = LegacyMemGuardCallback(
        log_dir=os.path.join(work_dir, "logs"),
        max_process_memory=(snapshot().process_tree or 0) + 400 * 2**20,
        checkpoint_path=os.path.join(work_dir, "guard.keras"),
        check_every_n_batches=5,
    )
    history = model.fit(data, epochs=30, steps_per_epoch=20, verbose=0, callbacks=[Leak(), guard])
    halt = guard.summary.halts[0] if guard.summary.halts else None
    print(
        f"worker {index}: " + (halt.describe() if halt else "finished without a halt"), flush=True
    )
    result = {
        "index": index,
        "halt": None
        if halt is None
        else {
            "metric": halt.metric,
            "epoch": halt.epoch,
            "batch": halt.batch,
            "checkpoint": halt.checkpoint,
        },
        "epochs_run": len(history.history["loss"]),
        "iterations": int(model.optimizer.iterations.numpy()),
    }
    with open(os.path.join(work_dir, f"result{index}.json"), "w") as f:
        json.dump(result, f)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="multiworker_demo")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--leak-mib", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.ports.split(","), args.work_dir, args.leak_mib)
        return 0
    ports = ",".join([free_port(), free_port()])
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(i),
                "--ports",
                ports,
                "--work-dir",
                args.work_dir,
                "--leak-mib",
                leak,
            ],
            start_new_session=True,
        )
        for i, leak in ((0, "0"), (1, "40"))
    ]
    try:
        codes = [p.wait(timeout=args.timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    print(
        f"worker exit codes: {codes}; TensorBoard: tensorboard --logdir "
        f"{os.path.abspath(os.path.join(args.work_dir, 'logs'))}"
    )
    return 0 if codes == [0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
