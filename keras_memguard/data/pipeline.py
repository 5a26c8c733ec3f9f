"""``dataset_from_tfds``: a fast tf.data input pipeline that caches within a RAM budget.

The usual recipe, ``ds.map(resize_224).cache().shuffle(1000).batch(64)``, caches the
*enlarged* images: 224×224×3 float32 is 602,112 bytes an image, about 28 GiB for
CIFAR-10's 50,000. This factory caches the raw decoded examples instead (3,072 bytes for
a 32×32×3 uint8 image), then shuffles, preprocesses, batches and prefetches. It decides
where the cache goes from an estimate of its bytes: in memory when that fits well
inside the RAM budget, in a file when a cache directory is given and has room, else
nowhere. The decision and its numbers are logged once and returned as a
:class:`PipelinePlan`.

Example:
    >>> train, plan = dataset_from_tfds("memguard_shapes", batch_size=64,
    ...                                 batch_preprocess=resize_224, with_info=True)
    >>> print(plan)
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
except ImportError as _missing:
    raise ImportError(
        "keras_memguard.dataset_from_tfds builds a tf.data pipeline and needs TensorFlow "
        "and TensorFlow Datasets, which are not installed here "
        f"({_missing}). Install them with: pip install 'keras-memguard[tensorflow]'. "
        "On JAX or PyTorch without TensorFlow, keras_memguard.data.shapes."
        "load_shapes_arrays() gives the offline memguard_shapes data as NumPy arrays."
    ) from _missing

from keras_memguard.data import tfds_registration as _tfds_registration
from keras_memguard.errors import MemGuardError, invalid_argument, positive_int
from keras_memguard.probes.snapshot import snapshot
from keras_memguard.sizes import format_bytes, parse_size

__all__ = ["CACHE_MODES", "DatasetUnavailableError", "PipelinePlan", "dataset_from_tfds"]

log = logging.getLogger("keras_memguard")

CACHE_MODES = ("auto", "memory", "file", "none")
# "Fits comfortably": an in-memory cache may take at most this share of the RAM budget.
MEMORY_CACHE_SHARE = 0.5
# A shuffle buffer may hold at most this share of the RAM budget.
SHUFFLE_SHARE = 0.1
# Encoded images (PNG/JPEG) decode to several times their stored size.
DECODE_FACTOR = 8.0
OFFLINE_ENV = "KERAS_MEMGUARD_OFFLINE"


class DatasetUnavailableError(MemGuardError, ValueError):
    """A dataset or split cannot be loaded here; the message says how to fix it."""


@dataclass(frozen=True)
class PipelinePlan:
    """What ``dataset_from_tfds`` decided, with the numbers it decided on.

    Attributes:
        dataset: the TFDS name and version.
        split: the split loaded.
        examples: examples in the split.
        element_bytes: estimated bytes of one raw (decoded) example; ``None`` if unknown.
        cache_bytes: estimated bytes of the cache (examples × element size).
        ram_budget: the RAM budget in bytes.
        cache: ``"memory"``, ``"file"`` or ``"none"``.
        cache_path: the cache file's path prefix for ``"file"``.
        shuffle_buffer: the shuffle buffer in examples (0: no shuffling).
        steps_per_epoch: batches in one pass over the split; pass it to `fit` with
            `repeat=True`. ``None`` when the split's size is unknown.
        reason: one sentence on why.
        tfds_info: TFDS's ``DatasetInfo``.
    """

    dataset: str
    split: str
    examples: int | None
    element_bytes: int | None
    cache_bytes: int | None
    ram_budget: int
    cache: str
    cache_path: str | None
    shuffle_buffer: int
    reason: str
    steps_per_epoch: int | None = None
    tfds_info: Any = None

    def __str__(self) -> str:
        where = f"{self.cache} ({self.cache_path})" if self.cache_path else self.cache
        return (
            f"{self.dataset} {self.split}: {self.examples} examples, cache ≈"
            f"{format_bytes(self.cache_bytes)} -> {where}; RAM budget "
            f"{format_bytes(self.ram_budget)}; shuffle buffer {self.shuffle_buffer}. {self.reason}"
        )


def _is_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def _builder(name: Any, data_dir: str | None) -> tfds.core.DatasetBuilder:
    if isinstance(name, tfds.core.DatasetBuilder):
        return name
    if not isinstance(name, str) or not name:
        raise invalid_argument(
            "name", name, "a TFDS dataset name such as 'cifar10', or a DatasetBuilder"
        )
    _tfds_registration.register()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        first = str(err).strip().splitlines()[0]
        raise DatasetUnavailableError(
            f"Dataset {name!r} is not known to TensorFlow Datasets ({first}). Check the name "
            "(tfds.list_builders()), or use the offline dataset 'memguard_shapes'."
        ) from None


def _needs_download(builder: tfds.core.DatasetBuilder) -> bool:
    from keras_memguard.data.memguard_shapes import MemguardShapes

    return not isinstance(builder, MemguardShapes)


def _prepare(builder: tfds.core.DatasetBuilder, download: bool | None) -> None:
    if builder.is_prepared():
        return
    name = builder.name
    allowed = (not _is_offline()) if download is None else download
    if _needs_download(builder) and not allowed:
        raise DatasetUnavailableError(
            f"Dataset {name!r} is not prepared in {builder.data_dir!r} and downloading is off "
            f"({'download=False' if download is False else OFFLINE_ENV + ' is set'}). Fix: "
            f"run tfds.builder({name!r}).download_and_prepare() on a connected machine and copy "
            "its data_dir here (pass data_dir=...), or train on the offline dataset "
            "'memguard_shapes'."
        )
    try:
        builder.download_and_prepare()
    except Exception as err:
        raise DatasetUnavailableError(
            f"Dataset {name!r} could not be downloaded and prepared into {builder.data_dir!r}: "
            f"{type(err).__name__}: {err}. Fix: download it on a connected machine and pass its "
            "data_dir=..., or use the offline dataset 'memguard_shapes'."
        ) from err


def _base_split(split: str) -> str:
    """The split's name without slicing or concatenation: 'train[:10%]' -> 'train'."""
    return re.split(r"[\[+]", split)[0]


def _split_examples(builder: tfds.core.DatasetBuilder, split: str) -> int | None:
    """Examples in ``split``; ``None`` when the builder records no splits (mock data)."""
    splits = builder.info.splits
    if not splits:
        return None
    base = _base_split(split)
    if base not in splits:
        raise invalid_argument(
            "split", split, f"one of {sorted(splits)} (optionally sliced, 'train[:10%]')"
        )
    try:
        return int(splits[split].num_examples)
    except (KeyError, ValueError, TypeError):
        return int(splits[base].num_examples)


def _element_bytes(spec: Any) -> int | None:
    total = 0
    for leaf in tf.nest.flatten(spec):
        shape = leaf.shape
        if shape.rank is None or any(d is None for d in shape):
            return None
        total += int(math.prod(shape)) * leaf.dtype.size
    return total


def _cache_key(builder: tfds.core.DatasetBuilder, split: str, as_supervised: bool) -> str:
    identity = f"{builder.name}|{builder.version}|{split}|supervised={as_supervised}"
    digest = hashlib.sha1(identity.encode()).hexdigest()[:12]
    safe_split = re.sub(r"[^A-Za-z0-9]+", "_", split).strip("_")
    return f"{builder.name}-{builder.version}-{safe_split}-{digest}"


def _decide_cache(
    mode: str,
    cache_bytes: int | None,
    budget: int,
    cache_dir: str | None,
    key: str,
) -> tuple[str, str | None, str]:
    estimate = format_bytes(cache_bytes) if cache_bytes is not None else "unknown"
    comfortable = int(budget * MEMORY_CACHE_SHARE)
    if mode == "none":
        return "none", None, "Caching is off (cache='none')."
    if mode == "memory":
        if cache_bytes is not None and cache_bytes > budget:
            raise ValueError(
                f"Invalid value for argument `cache`. Received: cache='memory', but the cache "
                f"would hold ≈{estimate}, more than the RAM budget of {format_bytes(budget)}. "
                "Use cache='file' with a cache_dir, cache='auto', or raise ram_budget."
            )
        return "memory", None, f"In memory as asked (≈{estimate} of {format_bytes(budget)})."
    path = os.path.join(cache_dir, key) if cache_dir else None
    if mode == "file":
        if path is None:
            raise invalid_argument("cache_dir", cache_dir, "a directory when cache='file'")
        _check_disk(cache_dir or "", cache_bytes, strict=True)
        return "file", path, f"In a file as asked (≈{estimate})."
    # auto
    if cache_bytes is not None and cache_bytes <= comfortable:
        return (
            "memory",
            None,
            (f"≈{estimate} fits within {int(MEMORY_CACHE_SHARE * 100)}% of the RAM budget."),
        )
    if path is not None and _check_disk(cache_dir or "", cache_bytes, strict=False):
        return (
            "file",
            path,
            (
                f"≈{estimate} does not fit comfortably in RAM ({format_bytes(budget)}); "
                "the disk has room."
            ),
        )
    log.warning(
        "keras-memguard: not caching: ≈%s does not fit comfortably in the RAM budget of %s%s.",
        estimate,
        format_bytes(budget),
        "" if path else " and no cache_dir was given",
    )
    return (
        "none",
        None,
        (
            f"≈{estimate} does not fit comfortably in the RAM budget of {format_bytes(budget)}"
            + (" and the disk lacks room." if path else ", and no cache_dir was given.")
        ),
    )


def _check_disk(cache_dir: str, cache_bytes: int | None, strict: bool) -> bool:
    os.makedirs(cache_dir, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    fits = cache_bytes is None or cache_bytes * 1.2 < free
    if strict and not fits:
        raise ValueError(
            f"Invalid value for argument `cache_dir`. Received: cache_dir={cache_dir!r}, which "
            f"has {format_bytes(free)} free; the cache needs ≈{format_bytes(cache_bytes)}."
        )
    return fits


def _ram_budget(ram_budget: Any) -> int:
    size = parse_size(0.5 if ram_budget is None else ram_budget, name="ram_budget")
    snap = snapshot(gpus=False)
    budget = size.resolve(snap.effective_limit)
    if budget is None:
        raise invalid_argument(
            "ram_budget", ram_budget, "bytes ('4GiB') where the memory limit is unknown"
        )
    if ram_budget is None and snap.effective_available is not None:
        budget = min(budget, snap.effective_available)
    return budget


def _cpu_budget() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def dataset_from_tfds(
    name: str | tfds.core.DatasetBuilder,
    split: str = "train",
    *,
    batch_size: int,
    preprocess: Callable[..., Any] | None = None,
    batch_preprocess: Callable[..., Any] | None = None,
    shuffle: bool | None = None,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    cache: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    ram_budget: int | float | str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool | None = None,
    as_supervised: bool = True,
    drop_remainder: bool = False,
    repeat: bool = False,
    with_info: bool = False,
) -> Any:
    """Builds a batched, prefetched ``tf.data.Dataset`` from TFDS, ready for ``model.fit``.

    Order: load (files shuffled for training, TFDS's auto-cache off) → cache the raw
    decoded examples (memory, file or none, by estimate) → shuffle → ``preprocess``
    (parallel) → batch → ``batch_preprocess`` (vectorized, parallel) → prefetch.

    Args:
        name: a TFDS name (`"cifar10"`, `"memguard_shapes"`) or a `DatasetBuilder`.
        split: the split, sliceable (`"train[:90%]"`). Defaults to `"train"`.
        batch_size: examples per batch, > 0.
        preprocess: per-example function, applied after the cache. Defaults to `None`.
        batch_preprocess: per-batch vectorized function, applied after batching; usually
            faster than `preprocess`. Defaults to `None`.
        shuffle: shuffle files and examples. Defaults to `None`: only for `train` splits.
        shuffle_buffer: examples in the shuffle buffer. Defaults to `None`: the whole
            split, capped at 10,000 and at 10% of the RAM budget.
        seed: makes shuffling reproducible and output deterministic. Defaults to `None`
            (non-deterministic order, which lets tf.data run faster).
        cache: `"auto"`, `"memory"`, `"file"` or `"none"`. Defaults to `"auto"`.
        cache_dir: directory for a file cache. Defaults to `None`.
        ram_budget: memory the pipeline may hold: bytes, `"4GiB"` or a fraction of the
            effective (container-aware) limit. Also bounds tf.data autotune's buffers.
            Defaults to `None`: half the effective limit, at most what is available now.
        data_dir: TFDS data directory. Defaults to `None` (TFDS's default).
        download: allow downloading a dataset that is not prepared. Defaults to `None`:
            allowed unless `KERAS_MEMGUARD_OFFLINE=1`. The offline dataset never downloads.
        as_supervised: yield `(input, label)` tuples. Defaults to `True`.
        drop_remainder: drop the last partial batch. Defaults to `False`.
        repeat: repeat forever, so `fit` keeps one iterator for the whole run; pass
            `steps_per_epoch=plan.steps_per_epoch` to `fit`. With a fresh iterator per
            epoch, tf.data's autotune made some epochs start about 1 s late here.
            Defaults to `False`.
        with_info: also return the :class:`PipelinePlan`. Defaults to `False`.

    Returns:
        The dataset, or `(dataset, plan)` with `with_info=True`.

    Raises:
        ValueError: a bad argument (named), or a cache that cannot fit.
        DatasetUnavailableError: an unknown dataset, a missing split, or a dataset that
            is not prepared and cannot be downloaded.

    Example:
        >>> def resize(images, labels):
        ...     return tf.image.resize(tf.cast(images, tf.float32) / 255, (224, 224)), labels
        >>> train = dataset_from_tfds("memguard_shapes", batch_size=64, batch_preprocess=resize)
        >>> model.fit(train, epochs=3)
    """
    positive_int(batch_size, "batch_size")
    if cache not in CACHE_MODES:
        raise invalid_argument("cache", cache, f"one of {', '.join(map(repr, CACHE_MODES))}")
    if shuffle_buffer is not None and (
        isinstance(shuffle_buffer, bool)
        or not isinstance(shuffle_buffer, int)
        or shuffle_buffer < 0
    ):
        raise invalid_argument("shuffle_buffer", shuffle_buffer, "an int >= 0, or None")
    for arg, fn in (("preprocess", preprocess), ("batch_preprocess", batch_preprocess)):
        if fn is not None and not callable(fn):
            raise invalid_argument(arg, fn, "a callable or None")
    if not isinstance(split, str) or not split:
        raise invalid_argument("split", split, "a split name such as 'train' or 'test[:50%]'")
    budget = _ram_budget(ram_budget)
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else None

    builder = _builder(name, os.fspath(data_dir) if data_dir is not None else None)
    _prepare(builder, download)
    examples = _split_examples(builder, split)
    training = split.startswith("train") if shuffle is None else bool(shuffle)

    ds = builder.as_dataset(
        split=split,
        shuffle_files=training,
        as_supervised=as_supervised,
        read_config=tfds.ReadConfig(try_autocache=False, shuffle_seed=seed),
    )
    element = _element_bytes(ds.element_spec)
    cache_bytes: int | None = None
    if element is not None and examples is not None:
        cache_bytes = element * examples
    elif examples is not None:
        recorded = builder.info.splits[_base_split(split)].num_bytes
        cache_bytes = int(recorded * DECODE_FACTOR) if recorded else None
    key = _cache_key(builder, split, as_supervised)
    mode, path, reason = _decide_cache(cache, cache_bytes, budget, cache_dir, key)
    if mode == "memory":
        ds = ds.cache()
    elif mode == "file":
        ds = ds.cache(path)

    buffer = 0
    if training:
        buffer = min(examples or 10_000, 10_000) if shuffle_buffer is None else shuffle_buffer
        if shuffle_buffer is None and element:
            buffer = max(1, min(buffer, int(budget * SHUFFLE_SHARE) // element))
        if buffer > 1:
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    deterministic = seed is not None
    if preprocess is not None:
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(
        batch_size,
        drop_remainder=drop_remainder,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if batch_preprocess is not None:
        ds = ds.map(
            batch_preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
        )
    if repeat:
        ds = ds.repeat()
    ds = ds.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.autotune.ram_budget = int(budget)
    options.autotune.cpu_budget = _cpu_budget()
    options.deterministic = deterministic
    ds = ds.with_options(options)

    steps = None
    if examples is not None:
        steps = examples // batch_size if drop_remainder else math.ceil(examples / batch_size)
    plan = PipelinePlan(
        dataset=f"{builder.name}:{builder.version}",
        split=split,
        examples=examples,
        element_bytes=element,
        cache_bytes=cache_bytes,
        ram_budget=budget,
        cache=mode,
        cache_path=path,
        shuffle_buffer=buffer,
        reason=reason,
        steps_per_epoch=steps,
        tfds_info=builder.info,
    )
    log.info("keras-memguard pipeline: %s", plan)
    return (ds, plan) if with_info else ds
