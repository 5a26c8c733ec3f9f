"""The buffers of a ``torch.utils.data.DataLoader``, read from its settings without iterating.

``pipeline_buffers(loader)`` returns the batches its worker processes keep in flight
(``num_workers x prefetch_factor``, each in shared memory until the training loop takes
it) and the batch being used, sized from the dataset's first sample x ``batch_size``.
With ``num_workers=0`` nothing is prefetched. ``pin_memory=True`` adds a pinned copy of
each batch the loop takes (counted in the batch part's detail, not predicted apart).
An ``IterableDataset`` (no ``[0]``) or a ``batch_sampler`` without a ``batch_size``
makes the parts unknown, with the reason.

Same module name in ``tensorflow/`` and ``jax/``: each answers for its framework's
pipeline and returns ``None`` for anything else.

Example:
    >>> loader = DataLoader(dataset, batch_size=64, num_workers=4)
    >>> [(b.name, b.bytes) for b in pipeline_buffers(loader)]
    [('loader queue', 25165824), ('input batch', 3145728)]
"""

from __future__ import annotations

from typing import Any

from keras_memguard.backends.pipeline import Buffer, structure_bytes
from keras_memguard.sizes import format_bytes

__all__ = ["is_dataloader", "pipeline_buffers"]


def is_dataloader(x: Any) -> bool:
    """Whether ``x`` is a ``torch.utils.data.DataLoader`` (checked without importing torch)."""
    return type(x).__module__.startswith("torch") and any(
        cls.__name__ == "DataLoader" for cls in type(x).__mro__
    )


def _unknown(why: str) -> tuple[Buffer, ...]:
    return (Buffer.unknown("loader queue", why),)


def pipeline_buffers(loader: Any) -> tuple[Buffer, ...] | None:
    """The queue and batch parts of a ``DataLoader``; ``None`` for anything else."""
    if not is_dataloader(loader):
        return None
    batch_size = loader.batch_size
    if batch_size is None:
        batch_size = getattr(loader.batch_sampler, "batch_size", None)
    if batch_size is None:
        return _unknown("its batch_sampler gives no batch_size")
    try:
        sample = structure_bytes(loader.dataset[0])
    except Exception as err:  # an IterableDataset, or the user's __getitem__ failing
        return _unknown(f"its dataset's first sample could not be read: {err!r}")
    if sample is None:
        return _unknown("its dataset's first sample holds something without a size")
    batch = batch_size * sample
    detail = f"{batch_size} samples of {format_bytes(sample)}"
    if loader.pin_memory:
        detail += "; pin_memory=True pins a copy of it"
    one = Buffer("input batch", batch, "exact", detail)
    workers = int(loader.num_workers or 0)
    if workers == 0:
        why = "num_workers=0: batches are loaded in the training loop, one at a time"
        return (Buffer("loader queue", 0, "exact", why), one)
    prefetch = int(loader.prefetch_factor or 2)
    count = workers * prefetch
    detail = (
        f"{workers} workers x prefetch_factor {prefetch} = {count} batches of {format_bytes(batch)}"
    )
    return (Buffer("loader queue", count * batch, "upper bound", detail), one)
