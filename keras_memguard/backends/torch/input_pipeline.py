"""The buffers of a ``torch.utils.data.DataLoader``, read from its settings without iterating.

``pipeline_parts(loader)`` returns the batches its worker processes keep in flight
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
    >>> [str(p) for p in pipeline_parts(loader)]
    ['loader queue: 24.0 MiB [upper bound] (4 workers x prefetch_factor 2 = 8 batches of 3.0 MiB)',
     'input batch: 3.0 MiB [exact] (64 samples of 48.0 KiB)']
"""

from __future__ import annotations

from typing import Any

from keras_memguard.estimate.inputs import structure_bytes
from keras_memguard.estimate.parts import EstimatePart, Method
from keras_memguard.sizes import format_bytes

__all__ = ["is_dataloader", "pipeline_parts"]


def is_dataloader(x: Any) -> bool:
    """Whether ``x`` is a ``torch.utils.data.DataLoader`` (checked without importing torch)."""
    return type(x).__module__.startswith("torch") and any(
        cls.__name__ == "DataLoader" for cls in type(x).__mro__
    )


def _unknown(why: str) -> tuple[EstimatePart, ...]:
    return (EstimatePart("loader queue", None, Method.UNKNOWN, why, "input"),)


def pipeline_parts(loader: Any) -> tuple[EstimatePart, ...] | None:
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
    one = EstimatePart("input batch", batch, Method.EXACT, detail, "input")
    workers = int(loader.num_workers or 0)
    if workers == 0:
        why = "num_workers=0: batches are loaded in the training loop, one at a time"
        return (EstimatePart("loader queue", 0, Method.EXACT, why, "input"), one)
    prefetch = int(loader.prefetch_factor or 2)
    count = workers * prefetch
    detail = (
        f"{workers} workers x prefetch_factor {prefetch} = {count} batches of {format_bytes(batch)}"
    )
    return (EstimatePart("loader queue", count * batch, Method.UPPER_BOUND, detail, "input"), one)
