"""Where ``dataset_from_tfds`` puts its cache and how large its buffers may be.

Pure decisions over sizes and budgets, with no TensorFlow: the pipeline measures, this
module decides, so every branch is testable on its own. The rule users expect is
*never past the RAM budget; inside it, as fast as possible*:

1. ``"preprocessed"``: cache the finished examples (after ``preprocess`` and
   ``batch_preprocess``) in memory when they fit the cache share of the budget;
   preprocessing then runs once, in the first epoch.
2. ``"raw"``: else cache the decoded raw examples in memory when *they* fit;
   preprocessing re-runs every epoch.
3. ``"file"``: else cache the raw examples in a file under ``cache_dir``, if the disk
   has room.
4. ``"none"``: else no cache.

Shares of the RAM budget: the cache at most :data:`CACHE_SHARE`, the shuffle buffer at
most :data:`SHUFFLE_SHARE`, tf.data's autotuned buffers (prefetch, parallel map and
batch) at most :data:`BUFFER_SHARE`; the rest is headroom for the training step.

Example:
    >>> place_cache("auto", raw_bytes=18 * 2**20, preprocessed_bytes=3 * 2**30,
    ...             budget=11 * 2**30, preprocessing=True, disk_free=None).cache
    'preprocessed'
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_memguard.errors import invalid_argument
from keras_memguard.sizes import format_bytes

__all__ = [
    "BUFFER_SHARE",
    "CACHE_MODES",
    "CACHE_SHARE",
    "DISK_MARGIN",
    "SHUFFLE_SHARE",
    "CachePlacement",
    "buffer_budget",
    "place_cache",
    "shuffle_examples",
]

CACHE_MODES = ("auto", "preprocessed", "raw", "file", "none")
# An in-memory cache may take at most this share of the RAM budget. With the default
# budget (half the effective memory limit) that is a quarter of the limit.
CACHE_SHARE = 0.5
# The shuffle buffer may hold at most this share of the RAM budget.
SHUFFLE_SHARE = 0.1
# tf.data's autotuned buffers (prefetch, parallel map/batch) may hold at most this share.
BUFFER_SHARE = 0.1
# A file cache needs this many times its estimate free on disk.
DISK_MARGIN = 1.2
# The default shuffle buffer is the whole split, capped at this many examples.
MAX_SHUFFLE = 10_000


@dataclass(frozen=True)
class CachePlacement:
    """Where the cache goes and one sentence on why.

    Attributes:
        cache: ``"preprocessed"`` (in memory, after preprocessing), ``"raw"`` (in
            memory, before), ``"file"`` (raw examples on disk) or ``"none"``.
        reason: why, with the sizes compared.
    """

    cache: str
    reason: str


def _size(size: int | None) -> str:
    return "≈" + format_bytes(size) if size is not None else "an unknown size"


def _too_big_for_memory(mode: str, size: int, budget: int) -> ValueError:
    return ValueError(
        f"Invalid value for argument `cache`. Received: cache={mode!r}, but the cache would "
        f"hold ≈{format_bytes(size)}, more than the RAM budget of {format_bytes(budget)}. "
        "Use cache='auto', cache='raw', cache='file' with a cache_dir, or raise ram_budget."
    )


def _disk_fits(raw_bytes: int | None, disk_free: int) -> bool:
    return raw_bytes is None or raw_bytes * DISK_MARGIN <= disk_free


def place_cache(
    mode: str,
    *,
    raw_bytes: int | None,
    preprocessed_bytes: int | None,
    budget: int,
    preprocessing: bool,
    disk_free: int | None,
) -> CachePlacement:
    """Decides where the cache goes from the sizes and the budget.

    Args:
        mode: one of :data:`CACHE_MODES`; anything but ``"auto"`` forces that placement.
        raw_bytes: estimated bytes of the split's decoded raw examples; ``None``: unknown.
        preprocessed_bytes: estimated bytes of the split after preprocessing; ``None``:
            unknown (variable shapes) or not cacheable.
        budget: the RAM budget in bytes.
        preprocessing: whether a ``preprocess`` or ``batch_preprocess`` is given. Without
            one the raw examples are the finished ones and ``"auto"`` says ``"raw"``.
        disk_free: free bytes in ``cache_dir``; ``None`` when no ``cache_dir`` is given.

    Returns:
        A :class:`CachePlacement`.

    Raises:
        ValueError: a forced in-memory cache larger than the whole budget, a forced file
            cache without a ``cache_dir`` or without room on its disk, or a bad ``mode``.

    Example:
        >>> place_cache("auto", raw_bytes=147 * 2**20, preprocessed_bytes=28 * 2**30,
        ...             budget=11 * 2**30, preprocessing=True, disk_free=None).cache
        'raw'
    """
    if mode not in CACHE_MODES:
        raise invalid_argument("cache", mode, f"one of {', '.join(map(repr, CACHE_MODES))}")
    share = int(budget * CACHE_SHARE)
    budget_text = f"{format_bytes(budget)} RAM budget"
    if mode == "none":
        return CachePlacement("none", "caching is off (cache='none')")
    if mode == "preprocessed":
        if preprocessed_bytes is not None and preprocessed_bytes > budget:
            raise _too_big_for_memory(mode, preprocessed_bytes, budget)
        return CachePlacement(
            "preprocessed", f"in memory after preprocessing, as asked (cache={mode!r})"
        )
    if mode == "raw":
        if raw_bytes is not None and raw_bytes > budget:
            raise _too_big_for_memory(mode, raw_bytes, budget)
        return CachePlacement("raw", f"raw examples in memory, as asked (cache={mode!r})")
    if mode == "file":
        if disk_free is None:
            raise invalid_argument("cache_dir", None, "a directory when cache='file'")
        if not _disk_fits(raw_bytes, disk_free):
            raise invalid_argument(
                "cache_dir",
                "(given)",
                f"a directory with {DISK_MARGIN}× the cache free",
                f"it has {format_bytes(disk_free)} free; the cache needs {_size(raw_bytes)}",
            )
        return CachePlacement("file", f"raw examples in a file, as asked (cache={mode!r})")
    # auto
    share_text = f"the cache share ({format_bytes(share)}, half the {budget_text})"
    if not preprocessing:
        if raw_bytes is not None and raw_bytes <= share:
            return CachePlacement("raw", f"no preprocessing, and the raw examples fit {share_text}")
        why_not_memory = f"the raw examples ({_size(raw_bytes)}) do not fit {share_text}"
    elif preprocessed_bytes is not None and preprocessed_bytes <= share:
        return CachePlacement(
            "preprocessed",
            f"the preprocessed examples fit {share_text}, so preprocessing runs only once",
        )
    else:
        pre = f"the preprocessed examples ({_size(preprocessed_bytes)}) do not fit {share_text}"
        if raw_bytes is not None and raw_bytes <= share:
            return CachePlacement(
                "raw", f"{pre}; the raw ones do, so preprocessing re-runs every epoch"
            )
        why_not_memory = f"{pre}, nor do the raw ones ({_size(raw_bytes)})"
    if disk_free is not None and _disk_fits(raw_bytes, disk_free):
        return CachePlacement(
            "file", f"{why_not_memory}; the disk has room ({format_bytes(disk_free)} free)"
        )
    where = "no cache_dir was given" if disk_free is None else "the disk lacks room"
    return CachePlacement("none", f"{why_not_memory}, and {where}: not caching")


def shuffle_examples(
    requested: int | None, examples: int | None, element_bytes: int | None, budget: int
) -> int:
    """Examples in the shuffle buffer: ``requested``, or the split within the budget.

    The default is the whole split, at most :data:`MAX_SHUFFLE` examples and at most
    :data:`SHUFFLE_SHARE` of ``budget`` at ``element_bytes`` an example (the size of an
    example where the shuffle sits: raw, or preprocessed after a preprocessed cache).

    Example:
        >>> shuffle_examples(None, 6000, 602_112, 11 * 2**30)
        1961
    """
    if requested is not None:
        return requested
    buffer = min(examples or MAX_SHUFFLE, MAX_SHUFFLE)
    if element_bytes:
        buffer = min(buffer, int(budget * SHUFFLE_SHARE) // element_bytes)
    return max(1, buffer)


def buffer_budget(budget: int) -> int:
    """Bytes tf.data's autotune may hold in prefetch and parallel map/batch buffers.

    Example:
        >>> buffer_budget(10 * 2**30) == 2**30
        True
    """
    return max(1, int(budget * BUFFER_SHARE))
