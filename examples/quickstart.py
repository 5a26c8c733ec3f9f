"""Quickstart: train a small CNN with keras-memguard watching its memory.

Shows the whole path in one run, offline, on the shipped `memguard_shapes` dataset:
configure_gpus -> dataset_from_tfds -> a small CNN -> fit with MemGuardCallback and
keras.callbacks.TensorBoard writing into one log directory -> the memory summary and
the command that opens TensorBoard.

Run:  python examples/quickstart.py [--epochs 3] [--log-dir memguard_logs]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="memguard_shapes", help="TFDS dataset name")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--log-dir", default="memguard_logs", help="TensorBoard log directory")
    parser.add_argument(
        "--max-process-memory",
        default="80%",
        help="stop before this process tree uses more (bytes, '12GiB', '80%%')",
    )
    parser.add_argument(
        "--min-available-memory", default=None, help="stop when less than this is available"
    )
    parser.add_argument(
        "--gpu-memory-limit",
        default=None,
        help="cap each GPU ('6GiB', '50%%'); default: memory growth",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="where to save the model if the guard halts (default: <log-dir>/guard.keras)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    import keras_memguard as mg

    # 1. Before TensorFlow touches a GPU: cap it instead of letting TF map all of it.
    if args.gpu_memory_limit:
        print(mg.configure_gpus(memory_limit=args.gpu_memory_limit))
    else:
        print(mg.configure_gpus(memory_growth=True))

    import keras
    import tensorflow as tf

    def scale(images, labels):
        return tf.cast(images, tf.float32) / 255.0, labels

    # 2. A pipeline that caches raw images within the RAM budget. repeat=True with
    #    steps_per_epoch keeps one iterator for the whole run (no epoch-start stall).
    train, plan = mg.dataset_from_tfds(
        args.dataset,
        "train",
        batch_size=args.batch_size,
        batch_preprocess=scale,
        data_dir=args.data_dir,
        repeat=True,
        with_info=True,
    )
    test = mg.dataset_from_tfds(
        args.dataset, "test", batch_size=256, batch_preprocess=scale, data_dir=args.data_dir
    )
    print(f"pipeline: {plan}")
    info = plan.tfds_info
    shape = info.features["image"].shape
    classes = info.features["label"].num_classes

    # 3. A small CNN.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])

    # 4. Fit with the guard first (so later callbacks see its logs keys) and TensorBoard.
    log_dir = os.path.abspath(args.log_dir)
    guard = mg.MemGuardCallback(
        log_dir=log_dir,
        max_process_memory=args.max_process_memory,
        min_available_memory=args.min_available_memory,
        checkpoint_path=args.checkpoint or os.path.join(log_dir, "guard.keras"),
    )
    start = time.time()
    model.fit(
        train,
        validation_data=test,
        epochs=args.epochs,
        steps_per_epoch=plan.steps_per_epoch,
        verbose=2,
        shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data.Dataset
        callbacks=[guard, keras.callbacks.TensorBoard(log_dir)],
    )
    _, accuracy = model.evaluate(test, verbose=0)

    # 5. What happened to memory (the guard printed its summary), and where to look.
    print(f"test accuracy {accuracy:.3f} (chance {1 / classes:.3f}) in {time.time() - start:.0f} s")
    print(f"See it in TensorBoard:  tensorboard --logdir {log_dir}")
    return float(accuracy)


if __name__ == "__main__":
    main()
