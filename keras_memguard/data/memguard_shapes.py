"""``memguard_shapes``: a small offline TFDS dataset of coloured geometric shapes.

32×32×3 uint8 images of four classes (circle, square, triangle, cross), drawn
procedurally from a fixed seed: the same bytes on every machine, no download. Shape,
size, position, colour and background vary, so a small CNN has something to learn
and clearly beats chance (25%) within an epoch or two.

After ``import keras_memguard`` it is registered with TFDS like any other dataset. The
drawing lives in :mod:`keras_memguard.data.shapes` (NumPy only), which also gives the
same examples as arrays without TensorFlow.

Example:
    >>> import keras_memguard, tensorflow_datasets as tfds
    >>> train = tfds.load("memguard_shapes", split="train", data_dir="/tmp/tfds")
"""

from __future__ import annotations

from typing import ClassVar

import tensorflow_datasets as tfds

from keras_memguard.data.shapes import CLASSES, IMAGE_SIZE, draw_shape, generate_examples

__all__ = ["CLASSES", "MemguardShapes", "draw_shape"]


class MemguardShapes(tfds.core.GeneratorBasedBuilder):
    """Coloured geometric shapes, 32×32×3, four classes; generated locally."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "First release: 6,000 train and 1,000 test images."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                    "label": tfds.features.ClassLabel(names=list(CLASSES)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://pypi.org/project/keras-memguard/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

    def _generate_examples(self, split: str):
        for index, image, label in generate_examples(split):
            yield index, {"image": image, "label": label}
