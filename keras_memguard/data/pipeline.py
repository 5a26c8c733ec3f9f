"""``dataset_from_tfds``: a fast tf.data input pipeline that never passes its RAM budget.

The usual recipe, ``ds.map(resize_224).cache().shuffle(1000).batch(64)``, caches the
*enlarged* images: 224×224×3 float32 is 602,112 bytes an image, about 28 GiB for
CIFAR-10's 50,000, more than many machines have. This factory estimates both the raw
and the preprocessed size of the split and places the cache by them (see
:mod:`keras_memguard.data.placement`): the finished examples in memory when they fit
the cache share of the RAM budget (as fast as the usual order, from epoch 2 on), else
the raw decoded examples in memory (3,072 bytes for a 32×32×3 uint8 image;
preprocessing re-runs every epoch), else the raw examples in a file, else nothing. The
shuffle buffer and tf.data's autotuned buffers get their own shares of the budget. The
decision and its numbers are logged once and returned as a :class:`PipelinePlan`.

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
from keras_memguard.data.placement import (
    CACHE_MODES,
    buffer_budget,
    place_cache,
    shuffle_examples,
)
from keras_memguard.errors import MemGuardError, invalid_argument, positive_int
from keras_memguard.memory_snapshot import snapshot
from keras_memguard.sizes import format_bytes, parse_size

__all__ = ["CACHE_MODES", "DatasetUnavailableError", "PipelinePlan", "dataset_from_tfds"]

log = logging.getLogger("keras_memguard")

# Encoded images (PNG/JPEG) decode to several times their stored size.
DECODE_FACTOR = 8.0
OFFLINE_ENV = "KERAS_MEMGUARD_OFFLINE"


class DatasetUnavailableError(MemGuardError, ValueError):
    """A dataset or split cannot be loaded here; the message says how to fix it."""


@dataclass(frozen=True)
class PipelinePlan:
    """What ``dataset_from_tfds`` decided, with the numbers it decided on.

    ``str(plan)`` is the one line the pipeline logs: where the cache went and why, with
    both sizes, the shuffle buffer and the bound on tf.data's buffers.

    Attributes:
        dataset: the TFDS name, config and version.
        split: the split loaded.
        examples: examples in the split.
        element_bytes: estimated bytes of one raw (decoded) example; ``None`` if unknown.
        raw_bytes: estimated bytes of the split's raw examples; ``None`` if unknown.
        preprocessed_bytes: estimated bytes of the split after ``preprocess`` and
            ``batch_preprocess`` (from their output spec); ``None`` if unknown.
        cache_bytes: estimated bytes of the cache placed (0 for ``"none"``).
        ram_budget: the RAM budget in bytes.
        cache: ``"preprocessed"`` (in memory, after preprocessing), ``"raw"`` (in memory,
            before), ``"file"`` (raw examples on disk) or ``"none"``.
        cache_path: the cache file's path prefix for ``"file"``.
        shuffle_buffer: the shuffle buffer in examples (0: no shuffling).
        buffer_budget: bytes tf.data's autotune may hold in prefetch and parallel
            map/batch buffers (``Options().autotune.ram_budget``).
        reason: why the cache went where it did.
        steps_per_epoch: batches in one pass over the split; pass it to `fit` with
            `repeat=True`. ``None`` when the split's size is unknown.
        tfds_info: TFDS's ``DatasetInfo``.
    """

    dataset: str
    split: str
    examples: int | None
    element_bytes: int | None
    raw_bytes: int | None
    preprocessed_bytes: int | None
    cache_bytes: int | None
    ram_budget: int
    cache: str
    cache_path: str | None
    shuffle_buffer: int
    buffer_budget: int
    reason: str
    steps_per_epoch: int | None = None
    tfds_info: Any = None

    def __str__(self) -> str:
        where = {
            "preprocessed": "preprocessed examples in memory",
            "raw": "raw examples in memory",
            "file": f"raw examples in a file ({self.cache_path})",
            "none": "none",
        }[self.cache]
        return (
            f"{self.dataset} {self.split}: {self.examples} examples, preprocessed "
            f"{_approx(self.preprocessed_bytes)}, raw {_approx(self.raw_bytes)}; cache: "
            f"{where}: {self.reason}; shuffle buffer {self.shuffle_buffer} examples; "
            f"tf.data buffers ≤ {format_bytes(self.buffer_budget)}; RAM budget "
            f"{format_bytes(self.ram_budget)}."
        )


def _approx(size: int | None) -> str:
    return "≈" + format_bytes(size) if size is not None else "unknown"


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
    config = builder.builder_config.name if builder.builder_config else ""
    identity = f"{builder.name}|{config}|{builder.version}|{split}|supervised={as_supervised}"
    digest = hashlib.sha1(identity.encode()).hexdigest()[:12]
    safe_split = re.sub(r"[^A-Za-z0-9]+", "_", split).strip("_")
    name = f"{builder.name}-{config}" if config else builder.name
    return f"{name}-{builder.version}-{safe_split}-{digest}"


def _disk_free(cache_dir: str | None) -> int | None:
    if cache_dir is None:
        return None
    os.makedirs(cache_dir, exist_ok=True)
    return shutil.disk_usage(cache_dir).free


def _preprocessed(
    ds: tf.data.Dataset,
    preprocess: Callable[..., Any] | None,
    batch_preprocess: Callable[..., Any] | None,
    batch_size: int,
    deterministic: bool,
) -> tf.data.Dataset | None:
    """The split's finished examples, one by one; ``None`` if they cannot be unbatched.

    ``batch_preprocess`` runs on batches (vectorized, as the user wrote it) and the result
    is split into examples again, so that the cache holds examples and the shuffle after
    it mixes examples, not whole batches, every epoch.
    """
    if preprocess is not None:
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if batch_preprocess is not None:
        ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        ds = ds.map(
            batch_preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
        )
        try:
            ds = _examples(ds)
        except (ValueError, TypeError):  # a batch_preprocess that returns no batch axis
            return None
    return ds


def _examples(batches: tf.data.Dataset) -> tf.data.Dataset:
    """The batches' examples, one by one: what ``unbatch()`` does, for less CPU.

    With the preprocessed cache, the first epoch took 8-10% less CPU per image this way
    than with ``unbatch()`` (6,000 images of ``benchmarks/bench_pipeline.py``, three
    interleaved rounds).
    """
    spec = batches.element_spec

    def slices(*batch: Any) -> tf.data.Dataset:  # flat_map unpacks tuples into arguments
        return tf.data.Dataset.from_tensor_slices(
            tf.nest.pack_sequence_as(spec, tf.nest.flatten(batch))
        )

    return batches.flat_map(slices)


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
    augment: Callable[..., Any] | None = None,
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

    Never past the RAM budget; inside it, as fast as possible. With the preprocessed
    cache: load → ``preprocess`` → batch → ``batch_preprocess`` → unbatch → cache →
    shuffle → batch → ``augment`` → prefetch, so preprocessing runs once and examples
    are still reshuffled every epoch. With a raw cache (memory or file) or none: load →
    cache → shuffle → ``preprocess`` → batch → ``batch_preprocess`` → ``augment`` →
    prefetch. `cache="auto"` picks the first that fits (see the pipeline docs page).

    Args:
        name: a TFDS name (`"cifar10"`, `"memguard_shapes"`) or a `DatasetBuilder`.
        split: the split, sliceable (`"train[:90%]"`). Defaults to `"train"`.
        batch_size: examples per batch, > 0.
        preprocess: per-example function. Deterministic: its output may be cached.
            Defaults to `None`.
        batch_preprocess: per-batch vectorized function, usually faster than
            `preprocess`; must keep the batch axis. Deterministic: its output may be
            cached. Defaults to `None`.
        augment: per-batch function applied after the cache, every epoch: put random
            augmentation here, never in `preprocess`. Defaults to `None`.
        shuffle: shuffle files and examples. Defaults to `None`: only for `train` splits.
        shuffle_buffer: examples in the shuffle buffer. Defaults to `None`: the whole
            split, capped at 10,000 and at 10% of the RAM budget (at the size of an
            example where the shuffle sits: preprocessed after a preprocessed cache).
        seed: makes shuffling reproducible and output deterministic. Defaults to `None`
            (non-deterministic order, which lets tf.data run faster).
        cache: `"auto"`, `"preprocessed"`, `"raw"`, `"file"` or `"none"`. Defaults to
            `"auto"`.
        cache_dir: directory for a file cache. Defaults to `None`.
        ram_budget: memory the pipeline may hold: bytes, `"4GiB"` or a fraction of the
            effective (container-aware) limit; the cache may take half of it, the
            shuffle buffer and tf.data's autotuned buffers a tenth each. Defaults to
            `None`: half the effective limit, at most what is available now.
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
        ValueError: a bad argument (named), or a forced cache that cannot fit.
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
    functions = (("preprocess", preprocess), ("batch_preprocess", batch_preprocess))
    for arg, fn in (*functions, ("augment", augment)):
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
    deterministic = seed is not None

    raw = builder.as_dataset(
        split=split,
        shuffle_files=training,
        as_supervised=as_supervised,
        read_config=tfds.ReadConfig(try_autocache=False, shuffle_seed=seed),
    )
    element = _element_bytes(raw.element_spec)
    raw_bytes: int | None = None
    if element is not None and examples is not None:
        raw_bytes = element * examples
    elif examples is not None:
        recorded = builder.info.splits[_base_split(split)].num_bytes
        raw_bytes = int(recorded * DECODE_FACTOR) if recorded else None
    preprocessing = preprocess is not None or batch_preprocess is not None
    finished = _preprocessed(raw, preprocess, batch_preprocess, batch_size, deterministic)
    finished_element = _element_bytes(finished.element_spec) if finished is not None else None
    preprocessed_bytes = raw_bytes  # without preprocessing the raw examples are finished
    if preprocessing:
        preprocessed_bytes = None
        if finished_element is not None and examples is not None:
            preprocessed_bytes = finished_element * examples
    placement = place_cache(
        cache,
        raw_bytes=raw_bytes,
        preprocessed_bytes=preprocessed_bytes,
        budget=budget,
        preprocessing=preprocessing,
        disk_free=_disk_free(cache_dir),
    )
    mode, reason = placement.cache, placement.reason
    if mode == "none" and cache == "auto":
        log.warning("keras-memguard: not caching: %s.", reason)
    path = os.path.join(cache_dir, _cache_key(builder, split, as_supervised)) if cache_dir else None

    if mode == "preprocessed" and finished is None:
        raise invalid_argument(
            "cache",
            cache,
            "'raw', 'file', 'none' or 'auto' here",
            "batch_preprocess's output has no batch axis to unbatch, so it cannot be cached",
        )
    if mode == "preprocessed" and finished is not None:
        ds, shuffled_element, cache_bytes = finished.cache(), finished_element, preprocessed_bytes
    else:
        ds, shuffled_element, cache_bytes = raw, element, raw_bytes
        if mode == "raw":
            ds = ds.cache()
        elif mode == "file":
            ds = ds.cache(path)
    buffer = 0
    if training:
        buffer = shuffle_examples(shuffle_buffer, examples, shuffled_element, budget)
        if buffer > 1:
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if mode != "preprocessed" and preprocess is not None:
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(
        batch_size,
        drop_remainder=drop_remainder,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if mode != "preprocessed" and batch_preprocess is not None:
        ds = ds.map(
            batch_preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
        )
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if repeat:
        ds = ds.repeat()
    ds = ds.prefetch(tf.data.AUTOTUNE)

    cpus = _cpu_budget()
    buffers = buffer_budget(budget)
    options = tf.data.Options()
    options.autotune.ram_budget = buffers
    options.autotune.cpu_budget = cpus
    options.deterministic = deterministic
    ds = ds.with_options(options)

    steps = None
    if examples is not None:
        steps = examples // batch_size if drop_remainder else math.ceil(examples / batch_size)
    config = builder.builder_config.name if builder.builder_config else None
    plan = PipelinePlan(
        dataset=f"{builder.name}{'/' + config if config else ''}:{builder.version}",
        split=split,
        examples=examples,
        element_bytes=element,
        raw_bytes=raw_bytes,
        preprocessed_bytes=preprocessed_bytes,
        cache_bytes=0 if mode == "none" else cache_bytes,
        ram_budget=budget,
        cache=mode,
        cache_path=path if mode == "file" else None,
        shuffle_buffer=buffer,
        buffer_budget=buffers,
        reason=reason,
        steps_per_epoch=steps,
        tfds_info=builder.info,
    )
    log.info("keras-memguard pipeline: %s", plan)
    return (ds, plan) if with_info else ds
