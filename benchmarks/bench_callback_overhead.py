"""Training throughput with MemGuardCallback at its defaults against no callback,
on the Keras backend in use, what one device-memory read costs there, and the
guard's fixed cost per ``fit()`` (people call fit in loops).

Run: python benchmarks/bench_callback_overhead.py [--rounds 12] [--part all] [--model conv]
     KERAS_BACKEND=jax python benchmarks/bench_callback_overhead.py
     KERAS_BACKEND=torch python benchmarks/bench_callback_overhead.py
     python benchmarks/bench_callback_overhead.py --part per-fit --fits 15
     python benchmarks/bench_callback_overhead.py --part watchdog --rounds 12

Per fit: a 64-step, one-epoch ``fit`` of a small dense model, timed whole, for no
callback, ``keras.callbacks.TensorBoard(log_dir)`` (TensorFlow only: it needs TF),
``MemGuardCallback(log_dir=...)`` built fresh for every fit, and one instance reused.
The sides are interleaved (rotating which goes first) and compared by medians.
Goal (issue #15): guard <= TensorBoard + 10 ms on TensorFlow, <= none + 20 ms on JAX
and PyTorch.
The two are interleaved in one process (A, B, A, B, ...) on the same compiled model,
so drift and noise hit both alike. Throughput is per epoch, timed by a callback placed
after the guard (so the guard's per-batch and epoch-end work is inside the timing);
the guard's once-per-fit costs (the first sample, and the gc at train end) are printed
separately. Goal: ratio >= 0.99. On TensorFlow the data come through tf.data; on JAX
and PyTorch as NumPy arrays (no TensorFlow needed).

``--model dense`` trains a small dense model instead of the convnet: steps of about
0.5 ms on the CPU machine, where a callback that made Keras wait for every step's logs
(JAX, PyTorch: a batch-end hook that is not ``async_safe``) shows at once.

``--part watchdog`` (issue #24): the same interleaved epochs for
``MemGuardCallback(log_dir=...)`` with its watchdog thread and heartbeat file, and with
the watchdog left out; the paired ratio (goal: within noise, >= 0.99), how many times the
watchdog read memory (goal: 0 in a healthy run once the model is compiled) and what the
training thread's part (``Watchdog.checked``) costs per check.

The device read is ``current_backend().device_memory()`` (JAX: ``memory_stats()`` of
each GPU; torch: the caching allocator's counters; TensorFlow: ``get_memory_info``).
Without a GPU it returns ``None`` at once, and the figure printed is that no-op's cost.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from _timing import EpochTimer

from keras_memguard import MemGuardCallback, release_memory
from keras_memguard.backends.base import current_backend

STEPS, BATCH = 150, 64


def make(kind: str = "conv"):
    rng = np.random.default_rng(0)
    shape = (32, 32, 3) if kind == "conv" else (32,)
    x = rng.random((STEPS * BATCH, *shape), dtype=np.float32)
    y = rng.integers(0, 10, STEPS * BATCH)
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache().prefetch(2)
        inputs: dict = {"x": data}
    else:
        inputs = {"x": x, "y": y, "batch_size": BATCH, "shuffle": False}
    layers = {
        "conv": [
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
        ],
        "dense": [
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
        ],
    }[kind]
    model = keras.Sequential(
        [keras.Input(shape), *layers, keras.layers.Dense(10, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    return model, inputs


def device_read_cost(reads: int = 1000) -> tuple[float, bool]:
    """Microseconds per ``device_memory()`` call, and whether it returned figures."""
    adapter = current_backend()
    figures = adapter.device_memory()
    start = time.perf_counter()
    for _ in range(reads):
        adapter.device_memory()
    return (time.perf_counter() - start) / reads * 1e6, figures is not None


class FullRelease(keras.callbacks.Callback):
    """The train-end release every fit paid before issue #15 (for comparison)."""

    def on_train_end(self, logs=None):
        release_memory()


def per_fit(fits: int = 15) -> None:
    """The fixed cost of one ``fit()``, each side timed whole and interleaved."""
    log_root = tempfile.mkdtemp(prefix="memguard_bench_")
    rng = np.random.default_rng(0)
    x = rng.random((64 * 32, 16), dtype=np.float32)
    y = rng.random((64 * 32, 1), dtype=np.float32)
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    reused = MemGuardCallback(log_dir=os.path.join(log_root, "reused"))
    full_collections = {"guard fresh": 0, "guard reused": 0}

    def fresh(i: int) -> list[keras.callbacks.Callback]:
        return [MemGuardCallback(log_dir=os.path.join(log_root, f"g{i}"))]

    sides: dict[str, Callable[[int], list[keras.callbacks.Callback]]] = {
        "none": lambda i: [],
        "guard fresh": fresh,
        "guard reused": lambda i: [reused],
        # The default before issue #15: a full gc.collect() + malloc_trim after every fit.
        "guard, full gc": lambda i: [
            MemGuardCallback(log_dir=os.path.join(log_root, f"f{i}")),
            FullRelease(),
        ],
    }
    if keras.config.backend() == "tensorflow":
        sides["keras TensorBoard"] = lambda i: [
            keras.callbacks.TensorBoard(os.path.join(log_root, f"tb{i}"))
        ]
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(fits + 2):  # two warm-up rounds (tracing, first writers), not counted
        for name in names[i % len(names) :] + names[: i % len(names)]:
            callbacks = sides[name](i)
            start = time.perf_counter()
            model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=callbacks)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
                if name in full_collections:
                    full_collections[name] += callbacks[0].summary.release.generation == 2
    shutil.rmtree(log_root, ignore_errors=True)
    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    print(f"\nper fit: 64 steps, 1 epoch, {fits} fits per side, interleaved (median ms)")
    for name, value in median.items():
        print(f"  {name:<20}{value:>8.1f} ms  ({value - median['none']:+.1f} ms vs none)")
    if "keras TensorBoard" in median:
        budget, reference = median["keras TensorBoard"] + 10, "TensorBoard + 10 ms"
    else:
        budget, reference = median["none"] + 20, "none + 20 ms"
    for name in ("guard fresh", "guard reused"):
        verdict = "met" if median[name] <= budget else "NOT met"
        print(
            f"  {name}: {median[name]:.1f} ms, goal <= {reference} = {budget:.1f} ms: {verdict} "
            f"({full_collections[name]} of {fits} fits ran a full collection)"
        )


def main(rounds: int = 12, epochs: int = 2, kind: str = "conv") -> None:
    model, data = make(kind)
    model.fit(**data, epochs=1, verbose=0)  # trace and warm the cache
    guard = MemGuardCallback(verbose=0)
    timers = {"none": EpochTimer(), "guard": EpochTimer()}
    fixed: list[float] = []
    for index in range(rounds):
        sides = [(timers["none"], []), (timers["guard"], [guard])]
        # Alternate which side goes first, so drift within a round cancels out.
        for timer, callbacks in sides if index % 2 == 0 else sides[::-1]:
            model.fit(**data, epochs=epochs, verbose=0, callbacks=[*callbacks, timer])
        start = time.perf_counter()
        guard.on_train_begin()
        guard.on_train_end()
        fixed.append(time.perf_counter() - start)
    none, guarded = ([STEPS * BATCH / t for t in timers[side].seconds] for side in timers)
    print(f"{rounds * epochs} epochs of {STEPS} steps each way, interleaved ({kind} model)")
    print(f"{'run':<22}{'median samples/s':>18}{'best samples/s':>16}")
    print(f"{'no callback':<22}{statistics.median(none):>18.0f}{max(none):>16.0f}")
    print(f"{'MemGuardCallback()':<22}{statistics.median(guarded):>18.0f}{max(guarded):>16.0f}")
    # This machine's epoch times drift and are sometimes bimodal; pairing epoch i of each
    # side (neighbours in time) and taking the median ratio is robust to that.
    paired = statistics.median(g / n for g, n in zip(guarded, none, strict=True))
    best = max(guarded) / max(none)
    verdict = "met" if paired >= 0.99 else "NOT met"
    print(
        f"ratio guard/none: median of paired epochs {paired:.3f} (goal >= 0.99: {verdict}); "
        f"best/best {best:.3f}"
    )
    print(f"on_train_begin + on_train_end alone: {statistics.median(fixed) * 1e3:.1f} ms")
    cost, gpu = device_read_cost()
    what = "with GPU figures" if gpu else "no GPU figures here: the no-op path"
    print(f"one device-memory read: {cost:.1f} us ({what})")


def watchdog(rounds: int = 12, epochs: int = 2, kind: str = "conv") -> None:
    """The watchdog's cost in a healthy run: the guard with it against without it."""
    from unittest import mock

    from keras_memguard.guard import callback, watchdog
    from keras_memguard.memory_snapshot import snapshot

    model, data = make(kind)
    model.fit(**data, epochs=1, verbose=0)  # trace and warm the cache
    log_root = tempfile.mkdtemp(prefix="memguard_bench_")
    guards = {
        "with watchdog": MemGuardCallback(log_dir=os.path.join(log_root, "on")),
        "without": MemGuardCallback(log_dir=os.path.join(log_root, "off")),
    }
    timers = {name: EpochTimer() for name in guards}
    reads = []
    real_snapshot = watchdog.snapshot
    counting = mock.patch.object(
        watchdog, "snapshot", lambda **k: reads.append(1) or real_snapshot(**k)
    )
    left_out = mock.patch.object(callback, "start_watchdog", lambda *a, **k: None)
    with counting:
        for index in range(rounds):
            names = list(guards) if index % 2 == 0 else list(guards)[::-1]
            for name in names:
                with left_out if name == "without" else contextlib.nullcontext():
                    model.fit(
                        **data, epochs=epochs, verbose=0, callbacks=[guards[name], timers[name]]
                    )
    shutil.rmtree(log_root, ignore_errors=True)
    on, off = ([STEPS * BATCH / t for t in timers[name].seconds] for name in guards)
    paired = statistics.median(a / b for a, b in zip(on, off, strict=True))
    print(f"{rounds * epochs} epochs of {STEPS} steps each way, interleaved ({kind} model)")
    print(f"  guard with watchdog: median {statistics.median(on):.0f} samples/s")
    print(f"  guard without:       median {statistics.median(off):.0f} samples/s")
    verdict = "met" if paired >= 0.99 else "NOT met"
    print(f"  ratio with/without: median of paired epochs {paired:.3f} (goal >= 0.99: {verdict})")
    print(f"  memory reads by the watchdog in these healthy fits: {len(reads)} (goal 0)")
    dog = watchdog.Watchdog(guards["without"].bounds, "exit")
    snap, calls = snapshot(gpus=False), 100_000
    start = time.perf_counter()
    for _ in range(calls):
        dog.checked(snap)
    each = (time.perf_counter() - start) / calls * 1e9
    print(f"  Watchdog.checked on the training thread: {each:.0f} ns a check")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fits", type=int, default=15, help="fits per side (per-fit part)")
    parser.add_argument(
        "--part", choices=["all", "throughput", "per-fit", "watchdog"], default="all"
    )
    parser.add_argument("--model", choices=["conv", "dense"], default="conv")
    args = parser.parse_args()
    print(f"backend {keras.config.backend()}, Keras {keras.__version__}")
    if args.part in ("all", "throughput"):
        main(args.rounds, args.epochs, args.model)
    if args.part in ("all", "per-fit"):
        per_fit(args.fits)
    if args.part in ("all", "watchdog"):
        watchdog(args.rounds, args.epochs, args.model)
