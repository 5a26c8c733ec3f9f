"""Quickstart: train a small CNN with keras-memguard watching its memory.

Shows the whole path in one run, offline, on the shipped `memguard_shapes` dataset:
configure_gpus -> dataset_from_tfds -> a small CNN -> fit with MemGuardCallback and
keras.callbacks.TensorBoard writing into one log directory -> the memory summary and
the command that opens TensorBoard.

On JAX or PyTorch (`KERAS_BACKEND=jax`) it needs no TensorFlow: the data come as NumPy
arrays (`keras_memguard.data.shapes`) and the guard writes its TensorBoard run itself.

Run:  python examples/quickstart.py [--epochs 3] [--log-dir memguard_logs]
      KERAS_BACKEND=jax python examples/quickstart.py
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

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

    # 1. Before the framework touches a GPU: cap it instead of letting it take most of it
    #    (TensorFlow maps nearly all of every GPU, JAX preallocates 75%).
    if args.gpu_memory_limit:
        print(mg.configure_gpus(memory_limit=args.gpu_memory_limit))
    else:
        print(mg.configure_gpus(memory_growth=True))

    import keras

    if keras.config.backend() == "tensorflow":
        train, test, fit_kwargs, shape, classes = _tfds_data(args, mg)
    else:  # JAX, PyTorch: NumPy arrays, no TensorFlow
        train, test, fit_kwargs, shape, classes = _array_data(args)

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
    # Keras's TensorBoard callback needs TensorFlow; the guard's own run does not.
    callbacks = (
        [keras.callbacks.TensorBoard(log_dir)] if keras.config.backend() == "tensorflow" else []
    )
    inputs = train if isinstance(train, tuple) else (train,)
    model.fit(
        *inputs,
        validation_data=test,
        epochs=args.epochs,
        verbose=2,
        callbacks=[guard, *callbacks],
        **fit_kwargs,
    )
    _, accuracy = model.evaluate(*(test if isinstance(test, tuple) else (test,)), verbose=0)

    # 5. What happened to memory, and where to look.
    print(guard.summary)
    print(f"test accuracy {accuracy:.3f} (chance {1 / classes:.3f}) in {time.time() - start:.0f} s")
    print(f"See it in TensorBoard:  tensorboard --logdir {log_dir}")
    return float(accuracy)


def _tfds_data(args: argparse.Namespace, mg: Any) -> tuple[Any, Any, dict, tuple, int]:
    """2. A tf.data pipeline that caches raw images within the RAM budget.

    repeat=True with steps_per_epoch keeps one iterator for the whole run (no epoch-start
    stall); the pipeline shuffles (Keras cannot shuffle a tf.data.Dataset).
    """
    import tensorflow as tf

    def scale(images, labels):
        return tf.cast(images, tf.float32) / 255.0, labels

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
    fit_kwargs = {"steps_per_epoch": plan.steps_per_epoch, "shuffle": False}
    return train, test, fit_kwargs, info.features["image"].shape, info.features["label"].num_classes


def _array_data(args: argparse.Namespace) -> tuple[Any, Any, dict, tuple, int]:
    """2. The same offline data as NumPy arrays (no TensorFlow needed)."""
    from keras_memguard.data.shapes import CLASSES, load_shapes_arrays

    if args.dataset != "memguard_shapes":
        raise SystemExit("without TensorFlow, only --dataset memguard_shapes is available")
    x, y = load_shapes_arrays("train")
    x_test, y_test = load_shapes_arrays("test")
    train = (x.astype("float32") / 255.0, y)
    test = (x_test.astype("float32") / 255.0, y_test)
    return train, test, {"batch_size": args.batch_size}, x.shape[1:], len(CLASSES)


if __name__ == "__main__":
    main()
