"""``memguard_shapes``: a small offline TFDS dataset of coloured geometric shapes.

32×32×3 uint8 images of four classes (circle, square, triangle, cross), drawn
procedurally from a fixed seed: the same bytes on every machine, no download. Shape,
size, position, colour and background vary, so a small CNN has something to learn
and clearly beats chance (25%) within an epoch or two.

Two configs: ``small`` (the default: 6,000 train / 1,000 test, PNG-encoded, about 10 s
to prepare) and ``cifar10_size`` (CIFAR-10's 50,000 / 10,000, stored as raw uint8
tensors so that it prepares quickly), for measuring pipelines at CIFAR-10's scale.

After ``import keras_memguard`` it is registered with TFDS like any other dataset. The
drawing lives in :mod:`keras_memguard.data.shapes` (NumPy only), which also gives the
same examples as arrays without TensorFlow.

Example:
    >>> import keras_memguard, tensorflow_datasets as tfds
    >>> train = tfds.load("memguard_shapes", split="train", data_dir="/tmp/tfds")
    >>> big = tfds.load("memguard_shapes/cifar10_size", split="train", data_dir="/tmp/tfds")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from keras_memguard.data.shapes import (
    CLASSES,
    IMAGE_SIZE,
    TEST_EXAMPLES,
    TRAIN_EXAMPLES,
    draw_shape,
    generate_examples,
)

__all__ = ["CLASSES", "MemguardShapes", "ShapesConfig", "draw_shape"]


@dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    """A size of ``memguard_shapes``: examples per split, and how images are stored.

    ``raw=True`` stores each image as its 3,072 raw bytes (no PNG encoding, which is
    what makes 60,000 images prepare in seconds rather than minutes).
    """

    train_examples: int = TRAIN_EXAMPLES
    test_examples: int = TEST_EXAMPLES
    raw: bool = False


class MemguardShapes(tfds.core.GeneratorBasedBuilder):
    """Coloured geometric shapes, 32×32×3, four classes; generated locally."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "First release: 6,000 train and 1,000 test images."
    }
    BUILDER_CONFIGS: ClassVar[list[ShapesConfig]] = [
        ShapesConfig(name="small", description="6,000 train / 1,000 test, PNG-encoded."),
        ShapesConfig(
            name="cifar10_size",
            description="CIFAR-10's size: 50,000 train / 10,000 test, raw uint8 tensors.",
            train_examples=50_000,
            test_examples=10_000,
            raw=True,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
        config = self.builder_config
        image = (
            tfds.features.Tensor(shape=shape, dtype=np.uint8)
            if config.raw
            else tfds.features.Image(shape=shape)
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"image": image, "label": tfds.features.ClassLabel(names=list(CLASSES))}
            ),
            supervised_keys=("image", "label"),
            homepage="https://pypi.org/project/keras-memguard/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.train_examples),
            "test": self._generate_examples("test", config.test_examples),
        }

    def _generate_examples(self, split: str, count: int):
        for index, image, label in generate_examples(split, count):
            yield index, {"image": image, "label": label}
