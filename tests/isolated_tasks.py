"""Module-level functions for run_isolated tests (a child process must import them)."""

from __future__ import annotations

import os
import sys
import time

MIB = 2**20


def add(a, b):
    return a + b


def fail(message):
    raise ValueError(message)


class Unpicklable(Exception):
    def __init__(self):
        super().__init__("carries a lambda")
        self.callback = lambda: None


def fail_unpicklably():
    raise Unpicklable()


def return_a_lock():
    import threading

    return threading.Lock()


def sleep(seconds):
    time.sleep(seconds)
    return "woke"


def leak(mib_per_step=50, steps=200, delay=0.02):
    held = []
    for _ in range(steps):
        held.append(b"x" * (mib_per_step * MIB))
        time.sleep(delay)
    return len(held)


def kill_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(10)


def exit_with(code):
    os._exit(code)


def read_env(name):
    return os.environ.get(name)


def child_state():
    from keras_memguard.isolation import run as isolation

    return str(isolation.child_gpu_report), "tensorflow" in sys.modules


def train_with_batch(batch_size, mib_per_example=4, headroom_mib=380):
    """Holds memory that scales with the batch size, under a guard that raises."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from keras_memguard import MemGuardCallback, snapshot

    x = np.random.rand(256, 8).astype("float32")
    y = (x.sum(1) > 4).astype("int32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:32], y[:32], verbose=0)
    bound = snapshot().process_tree + headroom_mib * MIB
    activations = []

    class Activations(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not activations:  # like a model's activations at this batch size
                activations.append(b"x" * (batch_size * mib_per_example * MIB))

    guard = MemGuardCallback(
        max_process_memory=bound,
        on_exceed="raise",
        check_every_n_batches=1,
        verbose=0,
        release_on_train_end=False,
    )
    history = model.fit(
        x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=[Activations(), guard]
    )
    return float(history.history["loss"][-1])


def pid_and_env(name):
    return os.getpid(), os.environ.get(name), "wave" in sys.modules


def _square(n):
    return n * n


def pool_sum(method, n=6):
    """A phase with its own multiprocessing pool (a daemonic child could not have one)."""
    import multiprocessing

    with multiprocessing.get_context(method).Pool(2) as pool:
        return sum(pool.map(_square, range(n)))


def nested_add(a, b):
    from keras_memguard.isolation.run import run_isolated

    return run_isolated(add, a, b), os.getpid()


def system_exit(code):
    sys.exit(code)


def start_grandchild_and_sleep(pidfile, own_session=False, hold_mib=0, seconds=60):
    """Starts a grandchild (optionally in its own session), notes both pids, sleeps."""
    import subprocess

    code = f"import time; held = b'x' * ({hold_mib} * 2**20); time.sleep({seconds})"
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=own_session)
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.replace(pidfile + ".tmp", pidfile)
    time.sleep(seconds)
    return child.pid


def hold_with_grandchild(pidfile, hold_mib, seconds):
    """Memory held by a grandchild, then a result: the tree must be counted."""
    start_grandchild_and_sleep(pidfile, hold_mib=hold_mib, seconds=seconds)
    return "done"


class Squares:
    """Built inside the child: a PyDataset with worker processes."""

    @staticmethod
    def fit_with_workers():
        import keras
        import numpy as np

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return 4

            def __getitem__(self, index):
                x = np.full((8, 2), index, dtype="float32")
                return x, x.sum(axis=1, keepdims=True)

        data = Batches(workers=2, use_multiprocessing=True)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        history = model.fit(data, epochs=1, verbose=0)
        return len(history.history["loss"])


def fail_above(batch_size, limit):
    """Out of memory above ``limit``; else where it ran and whether it was preloaded."""
    if batch_size > limit:
        raise MemoryError(f"batch {batch_size} does not fit")
    return os.getpid(), "wave" in sys.modules


def oom_killed_like(events_path):
    """What the kernel's OOM killer does: the cgroup's oom_kill count rises, SIGKILL."""
    import signal

    with open(events_path, "w") as f:
        f.write("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n")
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


def die_mid_reply(seconds=60):
    """Sends the start of a reply, leaves a forked process holding the connection, dies."""
    import struct

    fd = int(sys.argv[1])  # the child's end of the connection (see _process.start_child)
    if os.fork() == 0:
        time.sleep(seconds)
        os._exit(0)
    os.write(fd, struct.pack("!i", 1000) + b"the first bytes of 1000")
    os._exit(9)


def watchdog_exit_above(batch_size, limit):
    """Ends as the guard's watchdog ends a process (its exit code) above ``limit``."""
    from keras_memguard.errors import WATCHDOG_EXIT_CODE

    if batch_size > limit:
        os._exit(WATCHDOG_EXIT_CODE)
    return batch_size


def fill_input_with_batch(batch_size):
    """A guarded fit whose input fills memory in proportion to the batch (issue #24)."""
    import stuck_training

    return stuck_training.train_with_batch(batch_size)
