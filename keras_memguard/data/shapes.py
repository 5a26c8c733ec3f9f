"""The ``memguard_shapes`` images as NumPy arrays: offline, and without TensorFlow.

32×32×3 uint8 images of four classes (circle, square, triangle, cross), drawn
procedurally from a fixed seed: the same bytes on every machine, no download. The TFDS
builder (:mod:`keras_memguard.data.memguard_shapes`) writes these very examples; this
module needs only NumPy, so examples and tests run on JAX and PyTorch without
TensorFlow installed.

Example:
    >>> from keras_memguard.data.shapes import load_shapes_arrays
    >>> x, y = load_shapes_arrays("train")
    >>> x.shape, x.dtype, y.shape
    ((6000, 32, 32, 3), dtype('uint8'), (6000,))
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from keras_memguard.errors import invalid_argument

__all__ = [
    "CLASSES",
    "IMAGE_SIZE",
    "SPLITS",
    "draw_shape",
    "generate_examples",
    "load_shapes_arrays",
]

CLASSES = ("circle", "square", "triangle", "cross")
IMAGE_SIZE = 32
TRAIN_EXAMPLES = 6000
TEST_EXAMPLES = 1000
# split: (examples, seed)
SPLITS = {"train": (TRAIN_EXAMPLES, 2024), "test": (TEST_EXAMPLES, 7)}


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


def generate_examples(
    split: str, count: int | None = None
) -> Iterator[tuple[int, np.ndarray, int]]:
    """Yields ``(index, image, label)`` for ``split`` in generation order.

    ``count`` overrides the split's size (the ``cifar10_size`` config draws 50,000 from
    the same seed, so its first 6,000 training images are the default ones).
    """
    if split not in SPLITS:
        raise invalid_argument("split", split, f"one of {tuple(SPLITS)}")
    default, seed = SPLITS[split]
    count = default if count is None else count
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % len(CLASSES)
        yield index, draw_shape(rng, label), label


def load_shapes_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a split: uint8 ``(N, 32, 32, 3)`` and int64 ``(N,)``.

    The same examples as ``tfds.load("memguard_shapes", split=split)``, in generation
    order (TFDS stores them in an order of its own). Takes about a second.

    Args:
        split: `"train"` (6,000 images) or `"test"` (1,000). Defaults to `"train"`.

    Example:
        >>> x, y = load_shapes_arrays("test")
        >>> model.fit(x / 255.0, y, epochs=2)
    """
    images, labels = [], []
    for _, image, label in generate_examples(split):
        images.append(image)
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)
