"""The usual tf.data order against dataset_from_tfds, same resize-to-224 preprocessing.

Run: python benchmarks/bench_pipeline.py [DATA_DIR]
Each pipeline runs in its own fresh process on memguard_shapes train[:5000], two full
epochs read through one iterator (as `fit` with `steps_per_epoch` does), the two kinds
interleaved over ROUNDS rounds; medians are printed side by side: peak-RSS growth over
the process's RSS before the pipeline runs, and images/s in epochs 1 and 2, with ratios.
This machine's speed drifts between runs, hence the rounds.

usual:  map(to_float_and_resize_224) -> cache -> shuffle(1000) -> batch(64) -> prefetch
ours:   dataset_from_tfds(batch_size=64, batch_preprocess=resize_224): caches raw uint8,
        shuffles, batches, then resizes each batch in one vectorized op.
Goals: growth <= 1/15 of the usual order's; images/s >= 1.5x in epoch 1, >= 1.0x in 2.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

SPLIT, BATCH, SIZE, EXAMPLES, ROUNDS = "train[:5000]", 64, 224, 5000, 3


def run(kind: str, data_dir: str) -> dict[str, float]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_datasets as tfds

    import keras_memguard  # noqa: F401  (registers memguard_shapes)
    from keras_memguard import dataset_from_tfds
    from keras_memguard.probes.process import read_process_memory

    def to_float_and_resize(image, label):
        return tf.image.resize(tf.cast(image, tf.float32) / 255.0, (SIZE, SIZE)), label

    if kind == "usual":
        ds = tfds.load("memguard_shapes", split=SPLIT, data_dir=data_dir, as_supervised=True)
        ds = (
            ds.map(to_float_and_resize, num_parallel_calls=tf.data.AUTOTUNE)
            .cache()
            .shuffle(1000)
            .batch(BATCH)
            .prefetch(tf.data.AUTOTUNE)
        )
    else:
        ds = dataset_from_tfds(
            "memguard_shapes",
            SPLIT,
            batch_size=BATCH,
            data_dir=data_dir,
            batch_preprocess=to_float_and_resize,
        )
    before = read_process_memory().rss
    iterator = iter(ds.repeat())
    steps = -(-EXAMPLES // BATCH)
    rates = []
    for _ in range(2):
        start, images = time.perf_counter(), 0
        for _step in range(steps):
            batch, _labels = next(iterator)
            images += int(batch.shape[0])
        rates.append(images / (time.perf_counter() - start))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"growth_mib": (peak - before) / 2**20, "epoch1": rates[0], "epoch2": rates[1]}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(run(sys.argv[2], sys.argv[3])))
        return
    data_dir = (
        sys.argv[1]
        if len(sys.argv) > 1
        else os.path.join(tempfile.gettempdir(), "keras_memguard_bench_tfds")
    )
    prepare = (
        "import keras_memguard, tensorflow_datasets as tfds; "
        f"tfds.builder('memguard_shapes', data_dir={data_dir!r}).download_and_prepare()"
    )
    subprocess.run([sys.executable, "-c", prepare], check=True, capture_output=True)
    runs: dict[str, list[dict[str, float]]] = {"usual": [], "ours": []}
    for _ in range(ROUNDS):
        for kind in ("usual", "ours"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, data_dir],
                check=True,
                capture_output=True,
                text=True,
            )
            runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    usual, ours = (
        {key: statistics.median(r[key] for r in runs[kind]) for key in runs[kind][0]}
        for kind in ("usual", "ours")
    )
    print(
        f"memguard_shapes {SPLIT}, batch {BATCH}, resize to {SIZE}x{SIZE} float32, "
        f"median of {ROUNDS} runs each"
    )
    print(f"{'':<22}{'usual order':>14}{'dataset_from_tfds':>20}{'ratio':>10}")
    growth_ratio = ours["growth_mib"] / usual["growth_mib"]
    print(
        f"{'peak RSS growth MiB':<22}{usual['growth_mib']:>14.0f}{ours['growth_mib']:>20.0f}"
        f"{growth_ratio:>10.3f}"
    )
    for epoch in ("epoch1", "epoch2"):
        ratio = ours[epoch] / usual[epoch]
        print(f"{epoch + ' images/s':<22}{usual[epoch]:>14.0f}{ours[epoch]:>20.0f}{ratio:>10.2f}")
    goals = [
        growth_ratio <= 1 / 15,
        ours["epoch1"] >= 1.5 * usual["epoch1"],
        ours["epoch2"] >= 1.0 * usual["epoch2"],
    ]
    print(
        "goals (growth <= 1/15, epoch 1 >= 1.5x, epoch 2 >= 1.0x):",
        ", ".join("met" if g else "NOT met" for g in goals),
    )


if __name__ == "__main__":
    main()
