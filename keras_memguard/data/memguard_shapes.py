"""``memguard_shapes``: a small offline TFDS dataset of coloured geometric shapes.

32×32×3 uint8 images of four classes (circle, square, triangle, cross), drawn
procedurally from a fixed seed: the same bytes on every machine, no download. Shape,
size, position, colour and background vary, so a small CNN has something to learn
and clearly beats chance (25%) within an epoch or two.

Two configs: ``small`` (the default: 6,000 train / 1,000 test, PNG-encoded, about 10 s
to prepare) and ``cifar10_size`` (CIFAR-10's 50,000 / 10,000, stored as raw uint8
tensors so that it prepares quickly), for measuring pipelines at CIFAR-10's scale.

After ``import keras_memguard`` it is registered with TFDS like any other dataset.

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

__all__ = ["CLASSES", "MemguardShapes", "ShapesConfig", "draw_shape"]

CLASSES = ("circle", "square", "triangle", "cross")
IMAGE_SIZE = 32
TRAIN_EXAMPLES = 6000
TEST_EXAMPLES = 1000


def draw_shape(rng: np.random.Generator, label: int) -> np.ndarray:
    """Draws one 32×32×3 uint8 image of class ``label``."""
    size = IMAGE_SIZE
    background = rng.integers(0, 96, size=3)
    image = np.empty((size, size, 3), dtype=np.int16)
    image[:] = background
    image += rng.integers(-12, 13, size=(size, size, 3))
    colour = rng.integers(128, 256, size=3)
    radius = rng.uniform(6, 11)
    cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
    yy, xx = np.mgrid[0:size, 0:size]
    dy, dx = yy - cy, xx - cx
    if CLASSES[label] == "circle":
        mask = dy**2 + dx**2 <= radius**2
    elif CLASSES[label] == "square":
        mask = (np.abs(dy) <= radius * 0.8) & (np.abs(dx) <= radius * 0.8)
    elif CLASSES[label] == "triangle":
        mask = (dy <= radius * 0.7) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
    else:
        arm = radius * 0.3
        mask = ((np.abs(dy) <= arm) & (np.abs(dx) <= radius)) | (
            (np.abs(dx) <= arm) & (np.abs(dy) <= radius)
        )
    image[mask] = colour
    return np.clip(image, 0, 255).astype(np.uint8)


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
        return {
            "train": self._generate_examples(self.builder_config.train_examples, seed=2024),
            "test": self._generate_examples(self.builder_config.test_examples, seed=7),
        }

    def _generate_examples(self, count: int, seed: int):
        rng = np.random.default_rng(seed)
        for index in range(count):
            label = index % len(CLASSES)
            yield index, {"image": draw_shape(rng, label), "label": label}
