"""A deliberate memory leak, halted by the guard before the OOM killer, then resumed.

A callback holds 25 MiB more every batch, as a leaking cache or a list of tensors
would. The guard, bounded at the starting memory plus 300 MiB, stops training within a
batch of the bound and saves the model; the script then "fixes the leak", loads the
checkpoint and resumes at the halting epoch.

Run:  python examples/leak_and_resume.py [--work-dir leak_demo]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="leak_demo")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--leak-mib", type=int, default=25, help="MiB leaked per batch")
    parser.add_argument("--headroom-mib", type=int, default=300, help="bound above the start")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import keras_memguard as mg

    def scale(images, labels):
        return tf.cast(images, tf.float32) / 255.0, labels

    train = mg.dataset_from_tfds(
        "memguard_shapes", batch_size=64, batch_preprocess=scale, data_dir=args.data_dir
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])

    held: list[bytes] = []

    class Leak(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            held.append(b"x" * (args.leak_mib * 2**20))

    start = mg.snapshot().process_tree or 0
    bound = start + args.headroom_mib * 2**20
    checkpoint = os.path.join(args.work_dir, "guard.keras")
    guard = mg.MemGuardCallback(
        log_dir=os.path.join(args.work_dir, "logs"),
        max_process_memory=bound,
        checkpoint_path=checkpoint,
        check_every_n_batches=1,
    )
    print(f"start {mg.format_bytes(start)}, bound {mg.format_bytes(bound)}")
    model.fit(train, epochs=20, verbose=2, shuffle=False, callbacks=[Leak(), guard])
    halt = guard.summary.halts[0]
    print(f"halted: {halt.describe()}; checkpoint {halt.checkpoint}")

    held.clear()  # "fix the leak"
    mg.release_memory()
    resumed = keras.models.load_model(halt.checkpoint)
    history = resumed.fit(
        train,
        initial_epoch=halt.epoch,
        epochs=halt.epoch + 2,
        verbose=2,
        shuffle=False,
        callbacks=[mg.MemGuardCallback(max_process_memory=bound)],
    )
    print(f"resumed at epoch {halt.epoch}: accuracy {history.history['accuracy'][-1]:.3f}")


if __name__ == "__main__":
    main()
