"""The usual tf.data order against dataset_from_tfds, same resize-to-224 preprocessing.

Run: python benchmarks/bench_pipeline.py [DATA_DIR] [--rounds N] [--examples N] [--skip-large]

seed:     map(to_float_and_resize_224) -> cache -> shuffle(1000) -> batch(64) -> prefetch,
          the usual advice as issues #4 and #17 quote it (a map without
          num_parallel_calls): the goals are stated against it.
parallel: the same with map(..., num_parallel_calls=AUTOTUNE), a stronger baseline.
ours:     dataset_from_tfds(batch_size=64, batch_preprocess=resize_224), cache="auto".
raw:      the same with cache="raw" (the order before issue 17), for the trade-off.

Two scales, each pipeline in its own fresh process, two full epochs read through one
iterator (as `fit` with `steps_per_epoch` does); per run: peak-RSS growth over the
process's RSS before the first batch, and images/s in epochs 1 and 2.

1. memguard_shapes (small, 6,000 train images): the finished 224×224 float32 images
   (≈3.4 GiB) fit the budget, so ours caches them too. The kinds are interleaved over
   ROUNDS rounds and medians compared. Goals: epoch 1 >= 1.5x the seed's order, epoch
   2 >= 0.95x, ours' peak growth within its RAM budget. Also printed: the same ratios
   against the parallel map, and the floor under epoch 1 of any pipeline that caches
   the finished images (the kernel's cost of first touching that much fresh memory).
2. memguard_shapes/cifar10_size (CIFAR-10's 50,000 train images): the usual order would
   cache ≈28 GiB, more than this machine's memory, so it is reported and not run. Ours
   (raw cache, resize every epoch) runs once. Goals: two epochs complete, peak growth
   < 1.5 GiB, epoch-2 speed >= epoch-1 speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

BATCH, SIZE, ROUNDS = 64, 224, 3
FINISHED_BYTES = SIZE * SIZE * 3 * 4 + 8  # one resized float32 image and its int64 label
SMALL, LARGE = "memguard_shapes", "memguard_shapes/cifar10_size"
GIB, MIB = 2**30, 2**20


def usage() -> tuple[float, float, int]:
    """CPU seconds (all threads), of them in the kernel, and minor page faults so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime, usage.ru_minflt


def first_touch(examples: int, element_bytes: int) -> dict[str, object]:
    """CPU per example to write ``element_bytes`` of fresh memory: a cache's floor.

    Any pipeline that keeps the finished examples in memory writes this much new memory
    in epoch 1, and the kernel maps it in one page at a time on first write. A plain
    anonymous mapping, as TensorFlow's allocator gets from ``malloc`` (NumPy's own large
    arrays ask for huge pages, which TensorFlow's do not); runs in a child process.
    """
    import mmap

    import numpy as np

    cpu_start, sys_start, faults_start = usage()
    with mmap.mmap(-1, examples * element_bytes) as fresh:
        np.frombuffer(fresh, dtype=np.uint8).fill(1)
        cpu_end, sys_end, faults_end = usage()
    return {
        "cpu": 1000 * (cpu_end - cpu_start) / examples,
        "sys": 1000 * (sys_end - sys_start) / examples,
        "faults": (faults_end - faults_start) / examples,
    }


def run(kind: str, dataset: str, split: str, data_dir: str) -> dict[str, object]:
    """One pipeline, two epochs through one iterator; runs in a child process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_datasets as tfds

    import keras_memguard  # noqa: F401  (registers memguard_shapes)
    from keras_memguard import dataset_from_tfds

    def to_float_and_resize(image, label):
        return tf.image.resize(tf.cast(image, tf.float32) / 255.0, (SIZE, SIZE)), label

    plan = ""
    if kind in ("seed", "parallel"):
        ds = tfds.load(dataset, split=split, data_dir=data_dir, as_supervised=True)
        examples = int(ds.cardinality().numpy())
        parallel = tf.data.AUTOTUNE if kind == "parallel" else None
        ds = (
            ds.map(to_float_and_resize, num_parallel_calls=parallel)
            .cache()
            .shuffle(1000)
            .batch(BATCH)
            .prefetch(tf.data.AUTOTUNE)
        )
        budget = None
    else:
        ds, info = dataset_from_tfds(
            dataset,
            split,
            batch_size=BATCH,
            data_dir=data_dir,
            batch_preprocess=to_float_and_resize,
            cache="raw" if kind == "raw" else "auto",
            with_info=True,
        )
        examples, plan, budget = info.examples, str(info), info.ram_budget
    before = psutil.Process().memory_info().rss
    iterator = iter(ds.repeat())
    steps = -(-examples // BATCH)
    result: dict[str, object] = {}
    for epoch in (1, 2):
        start, (cpu_start, sys_start, faults_start), images = time.perf_counter(), usage(), 0
        for _step in range(steps):
            batch, _labels = next(iterator)
            images += int(batch.shape[0])
        seconds = time.perf_counter() - start
        cpu_end, sys_end, faults_end = usage()
        result[f"epoch{epoch}"] = images / seconds
        result[f"cpu{epoch}"] = 1000 * (cpu_end - cpu_start) / images
        result[f"sys{epoch}"] = 1000 * (sys_end - sys_start) / images
        result[f"faults{epoch}"] = (faults_end - faults_start) / images
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        **result,
        "growth_mib": (peak - before) / MIB,
        "budget_mib": budget / MIB if budget else None,
        "plan": plan,
        "examples": examples,
    }


def child(kind: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare(dataset: str, data_dir: str) -> float:
    code = (
        "import keras_memguard, tensorflow_datasets as tfds; "
        f"tfds.builder({dataset!r}, data_dir={data_dir!r}).download_and_prepare()"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def small(data_dir: str, rounds: int, split: str) -> None:
    prepare(SMALL, data_dir)
    kinds = ("seed", "parallel", "ours", "raw")
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    touches: list[dict[str, Any]] = []
    for index in range(rounds):
        turn = index % len(kinds)
        for kind in kinds[turn:] + kinds[:turn]:  # rotate who goes first
            runs[kind].append(child(kind, SMALL, split, data_dir))
        examples = str(runs["ours"][-1]["examples"])
        touches.append(child("touch", examples, str(FINISHED_BYTES)))
    keys = ("growth_mib", "epoch1", "epoch2", "cpu1", "cpu2", "sys1", "sys2", "faults1", "faults2")
    med = {
        kind: {key: statistics.median(float(r[key]) for r in runs[kind]) for key in keys}
        for kind in kinds
    }
    seed, parallel, ours, raw = (med[kind] for kind in kinds)
    budget = float(runs["ours"][0]["budget_mib"])
    print(f"== {SMALL} {split}, batch {BATCH}, resize to {SIZE}x{SIZE} float32, median of {rounds}")
    print(f"ours: {runs['ours'][0]['plan']}")
    print(
        f"{'':<24}{'seed order':>11}{'parallel map':>13}{'ours':>9}{'raw':>9}"
        f"{'ours/seed':>11}{'ours/par.':>10}"
    )
    print("(ratios: ours / other for images/s and memory, other / ours for CPU ms per image)")
    rows = [
        ("peak RSS growth MiB", "growth_mib", "{:.0f}", False),
        ("epoch 1 images/s", "epoch1", "{:.0f}", False),
        ("epoch 2 images/s", "epoch2", "{:.0f}", False),
        ("epoch 1 CPU ms/image", "cpu1", "{:.3f}", True),
        ("  of it in the kernel", "sys1", "{:.3f}", True),
        ("epoch 2 CPU ms/image", "cpu2", "{:.3f}", True),
        ("epoch 1 page faults/image", "faults1", "{:.0f}", True),
    ]
    for label, key, form, inverse in rows:
        cells = "".join(
            f"{form.format(med[k][key]):>{w}}" for k, w in zip(kinds, (11, 13, 9, 9), strict=True)
        )
        ratios = [
            (other[key] / ours[key] if inverse else ours[key] / other[key])
            if ours[key] and other[key]
            else float("nan")
            for other in (seed, parallel)
        ]
        print(f"{label:<24}{cells}{ratios[0]:>11.2f}{ratios[1]:>10.2f}")
    for kind in kinds:
        each = ", ".join(f"{float(r['epoch1']):.0f}/{float(r['epoch2']):.0f}" for r in runs[kind])
        print(f"  each run, {kind} epoch1/epoch2 images/s: {each}")
    touch = {k: statistics.median(float(t[k]) for t in touches) for k in ("cpu", "sys", "faults")}
    goal_cpu = parallel["cpu1"] / 1.5
    print(
        f"floor: any in-memory cache of the finished images maps {FINISHED_BYTES:,} B of fresh "
        f"memory per image in epoch 1, {touch['sys']:.3f} CPU ms/image in the kernel alone "
        f"({touch['faults']:.0f} page faults; measured in a process of its own). Epoch 1 at "
        f"1.5x the parallel map (both keep every core busy) would be {goal_cpu:.3f} ms/image, "
        f"leaving {goal_cpu - touch['sys']:.3f} ms for reading, decoding and resizing, work "
        f"that takes {raw['cpu1']:.3f} ms in cache='raw''s epoch 1 and {raw['cpu2']:.3f} ms "
        "from memory in its epoch 2."
    )
    goals = {
        "epoch 1 >= 1.5x the seed's order": ours["epoch1"] >= 1.5 * seed["epoch1"],
        "epoch 2 >= 0.95x": ours["epoch2"] >= 0.95 * seed["epoch2"],
        f"growth <= RAM budget ({budget:.0f} MiB)": ours["growth_mib"] <= budget,
    }
    print("goals:", ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
    print(
        f"against the parallel map: epoch 1 {ours['epoch1'] / parallel['epoch1']:.2f}x, "
        f"epoch 2 {ours['epoch2'] / parallel['epoch2']:.2f}x"
    )


def large(data_dir: str) -> None:
    from keras_memguard import snapshot

    seconds = prepare(LARGE, data_dir)
    examples = 50_000
    usual_cache = examples * FINISHED_BYTES  # the seed's and the parallel map's cache
    snap = snapshot(gpus=False)
    limit = snap.effective_limit
    print(f"\n== {LARGE} train ({examples} images; prepare step {seconds:.0f} s incl. startup)")
    fits = limit is not None and usual_cache < limit
    print(
        f"usual order: planned cache {usual_cache / GIB:.1f} GiB against this machine's "
        f"{(limit or 0) / GIB:.1f} GiB memory limit: "
        + ("would fit, but is not run" if fits else "over the limit, not run")
    )
    ours = child("ours", LARGE, "train", data_dir)
    print(f"ours: {ours['plan']}")
    growth, e1, e2 = (float(ours[k]) for k in ("growth_mib", "epoch1", "epoch2"))
    print(f"ours: peak RSS growth {growth:.0f} MiB; images/s epoch 1 {e1:.0f}, epoch 2 {e2:.0f}")
    print(
        f"ours: CPU ms/image epoch 1 {float(ours['cpu1']):.3f}, epoch 2 {float(ours['cpu2']):.3f}"
    )
    goals = {
        "usual order over the limit": not fits,
        "growth < 1.5 GiB": growth < 1.5 * 1024,
        "epoch 2 >= epoch 1": e2 >= e1,
    }
    print("goals:", ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))


def main() -> None:
    if sys.argv[1:3] == ["--child", "touch"]:
        print(json.dumps(first_touch(int(sys.argv[3]), int(sys.argv[4]))))
        return
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        print(json.dumps(run(*sys.argv[2:6])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data_dir", nargs="?", default=os.path.join(tempfile.gettempdir(), "keras_memguard_bench")
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--examples", type=int, default=None, help="train[:N] of the small one")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-small", action="store_true")
    args = parser.parse_args()
    print(f"machine load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if not args.skip_small:
        split = f"train[:{args.examples}]" if args.examples else "train"
        small(args.data_dir, args.rounds, split)
    if not args.skip_large:
        large(args.data_dir)
    print(f"machine load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
