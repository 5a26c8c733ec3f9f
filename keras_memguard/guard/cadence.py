"""When the guard checks: by batch count, by time, or as fast as memory grows (issue #23).

The callback counts batch-begin hooks; a check is due after ``check_every_n_batches``
of them where that is given, else ``check_interval`` seconds after the last one. After
each check ``Cadence.project`` measures the growth per batch since the previous check
(``headroom.growth_per_batch``) and says how many batches the next check may wait
(``headroom.outlook``): every batch while memory grows fast against the room left, and
every batch during a fit's first ``WARMUP_CHECKS``. With several workers, checks go by
batch count only (the same step on every worker) and the workers' vote sets the count.

Example:
    >>> cadence = Cadence(check_every=None)
    >>> cadence.batches_since_check += 1
    >>> cadence.due(check_interval=0.1)      # never checked yet
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from keras_memguard.guard import headroom
from keras_memguard.guard.headroom import WARMUP_CHECKS, Reading, growth_per_batch, outlook
from keras_memguard.guard.policy import Bounds, Crossing
from keras_memguard.memory_snapshot import MemorySnapshot

__all__ = ["MULTI_WORKER_CHECK_EVERY", "Cadence"]

# With several workers, checks happen on batch counts (the same step on every worker).
MULTI_WORKER_CHECK_EVERY = 10


@dataclass
class Cadence:
    """One fit's (or one ``evaluate()``/``predict()``'s) check cadence.

    Attributes:
        check_every: batches between checks as configured (``check_every_n_batches``,
            the multi-worker default, or the workers' vote); ``None``: by time.
        due_in: batches until the next check as the growth asks (``None``: by time).
        batches_since_check: batch-begin hooks since the phase's last check.
        last_check: ``time.monotonic()`` of the last reading.
        reading, rates, checks: the last check's reading, the growth per batch, the
            number of checks ``project`` made.
    """

    check_every: int | None
    due_in: int | None = 1  # warm-up: every batch
    batches_since_check: int = 0
    last_check: float = float("-inf")
    reading: Reading | None = None
    rates: dict[str, float] = field(default_factory=dict)
    checks: int = 0

    def new_phase(self) -> None:
        """A phase starts: its count of batches and its clock start afresh."""
        self.batches_since_check = 0
        self.last_check = float("-inf")

    def restart(self, check_every: int | None) -> None:
        """``evaluate()``/``predict()`` outside a fit: growth from its own checks, by time."""
        self.check_every = check_every
        self.reading, self.rates, self.due_in = None, {}, None

    def due(self, check_interval: float) -> bool:
        """Whether the batch about to run is checked (``batches_since_check`` counts it)."""
        every, configured = self.due_in, self.check_every
        if configured is not None and (every is None or configured < every):
            every = configured
        due = every is not None and self.batches_since_check >= every
        if not due and configured is None:
            due = time.monotonic() - self.last_check >= check_interval
        return due

    def project(
        self,
        bounds: Bounds,
        snap: MemorySnapshot,
        batches: int,
        *,
        save: int,
        extra_batches: int,
        warmup: bool,
    ) -> tuple[list[Crossing], bool]:
        """The bounds the next check's memory (+ the save) crosses; whether checks are near.

        ``batches``: batch-begin hooks seen so far; ``warmup``: a fit, whose first
        ``WARMUP_CHECKS`` check every batch. Sets ``due_in``; "near" (fewer batches to
        the next check than ``MULTI_WORKER_CHECK_EVERY``) asks the workers' vote for
        checks at every batch.
        """
        now = headroom.reading(snap, batches)
        rates = growth_per_batch(self.reading, now)
        if rates is not None or self.reading is None:
            self.reading, self.rates = now, rates or {}
        look = outlook(bounds, snap, self.rates, save=save, extra_batches=extra_batches)
        self.checks += 1
        self.due_in = 1 if warmup and self.checks <= WARMUP_CHECKS else look.batches_to_check
        near = self.due_in is not None and self.due_in < MULTI_WORKER_CHECK_EVERY
        return look.crossings, near

    def voted(self, near: bool, check_every_n_batches: int | None) -> None:
        """The workers' vote sets the cadence (this worker's projection could differ)."""
        self.due_in = None
        self.check_every = 1 if near else check_every_n_batches or MULTI_WORKER_CHECK_EVERY
