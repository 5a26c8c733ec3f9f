"""CIFAR-10 at 224×224, with the resize done after the cache (for online users).

Shows the fix for the classic "my machine sits at 95% memory" pipeline:
`map(resize_224).cache()` would cache ≈28 GiB of float32 images; dataset_from_tfds caches
the raw 32×32 uint8 images (≈150 MiB) and resizes each batch on the fly. Needs the
CIFAR-10 download (about 160 MB) the first time; offline, it fails at once with an error
that says what to do. A GPU makes the 224-pixel model practical.

Run:  python examples/cifar10_resize.py [--epochs 5] [--image-size 224]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--log-dir", default="cifar10_logs")
    parser.add_argument("--gpu-memory-limit", default=None, help="e.g. '8GiB' or '50%%'")
    args = parser.parse_args(argv)

    import keras_memguard as mg

    if args.gpu_memory_limit:
        print(mg.configure_gpus(memory_limit=args.gpu_memory_limit))
    else:
        print(mg.configure_gpus(memory_growth=True))

    import keras
    import tensorflow as tf

    size = args.image_size

    def resize(images, labels):  # vectorized; at 224 px too big to cache, so raw images are
        return tf.image.resize(tf.cast(images, tf.float32) / 255.0, (size, size)), labels

    try:
        train, plan = mg.dataset_from_tfds(
            "cifar10",
            "train",
            batch_size=args.batch_size,
            batch_preprocess=resize,
            data_dir=args.data_dir,
            with_info=True,
        )
        test = mg.dataset_from_tfds(
            "cifar10",
            "test",
            batch_size=args.batch_size,
            batch_preprocess=resize,
            data_dir=args.data_dir,
        )
    except mg.DatasetUnavailableError as err:
        print(f"cifar10_resize: {err}", file=sys.stderr)
        return 2
    print(f"pipeline: {plan}")
    print(
        f"the usual map-then-cache order would cache ≈"
        f"{mg.format_bytes(plan.examples * size * size * 3 * 4)}"
    )

    model = keras.applications.MobileNetV3Small(
        input_shape=(size, size, 3), weights=None, classes=10, include_preprocessing=False
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    guard = mg.MemGuardCallback(
        log_dir=args.log_dir,
        max_process_memory="85%",
        max_gpu_memory=0.95,
        checkpoint_path=os.path.join(args.log_dir, "guard.keras"),
    )
    model.fit(
        train,
        validation_data=test,
        epochs=args.epochs,
        shuffle=False,
        callbacks=[guard, keras.callbacks.TensorBoard(args.log_dir)],
    )
    print(f"See it in TensorBoard:  tensorboard --logdir {os.path.abspath(args.log_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
