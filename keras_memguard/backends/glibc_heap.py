"""The C heap a CPU step reaches: its tensors' allocations replayed through glibc's rules.

PyTorch's CPU allocator keeps no cache of its own: every tensor's memory is
``posix_memalign(64, n)`` and goes back with ``free`` (c10's ``alloc_cpu``). Under glibc
(read: 2.36) much of what a step frees stays in the process, by these rules, each modelled
here (a trace of tensors counts only the live bytes):

- **memalign's padding**: for ``n`` bytes glibc needs a free chunk of ``n`` + 8 (its
  header, rounded to 16) + 64 (the alignment) + 32 (its smallest chunk) and gives back
  what the alignment did not use, so a block freed by a tensor of ``n`` bytes cannot hold
  the next tensor of ``n`` bytes (the same op in the next layer or the next step);
- **best fit**: a request takes the smallest free chunk that holds it (glibc's sorted
  large bins), else the top of the heap, which grows (``brk``) by the request plus
  128 KiB (``M_TOP_PAD``);
- **the dynamic mmap threshold**: a request of at least the threshold (128 KiB at first)
  that the heap cannot hold is mapped on its own and unmapped when freed; freeing it
  raises the threshold to its size (up to 32 MiB), so from the next step on such tensors
  come from the heap and stay there;
- **trim**: the heap goes back to the system only from its top, when at least the trim
  threshold (twice the mmap threshold) is free there;
- **no merging within a step**: the 32-96 byte tails memalign gives back, and the small
  objects the step makes (autograd nodes, tensor headers, which take them), sit between
  neighbouring blocks until the step's graph is freed: a freed block is reused as it is
  (by a smaller request) and merges with free neighbours only at the end of the step.

The peak of the heap's extent plus the mapped blocks is the step's memory as the process
sees it (resident: tensors write all they get). Against glibc's own ``brk`` during real
3-step fits (the wide and conv models of docs/estimate.md, logged with an LD_PRELOAD
shim): the replay read 2-17% above it, the live tensors' peak 20-43% below it.

Example:
    >>> # 8 MiB, freed, 8 MiB again: the second does not fit the first's freed block
    >>> heap_peak([(1, 8 << 20), (1, None), (2, 8 << 20), (2, None)])
    16912384
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence

__all__ = ["Event", "heap_peak", "live_peak"]

Event = tuple[Hashable, int | None]  # (key, bytes) allocates; (key, None) frees that key

_PAGE = 4096
_MIN_CHUNK = 32
_HEADER = 8
_ALIGN_PAD = 64 + _MIN_CHUNK  # what posix_memalign(64, n) asks beyond the chunk
_TOP_PAD = 128 * 1024
_THRESHOLD = 128 * 1024  # glibc's first mmap threshold
_THRESHOLD_MAX = 32 * 2**20  # the dynamic threshold's ceiling on 64-bit


def _up(n: int, to: int) -> int:
    return -(-n // to) * to


class _Heap:
    """glibc's main arena, as far as blocks of tensors go."""

    def __init__(self) -> None:
        self.threshold = _THRESHOLD
        self.free: list[tuple[int, int]] = []  # (size, address) of the free chunks, sorted
        self.top = self.brk = self.mapped = self.peak = 0
        self.blocks: dict[Hashable, tuple[int, int]] = {}  # key -> (address or -1, size)

    def alloc(self, key: Hashable, nbytes: int) -> None:
        size = max(_MIN_CHUNK, _up(nbytes + _HEADER, 16))
        need = size + _ALIGN_PAD
        index = bisect.bisect_left(self.free, (need, -1))  # best fit: the smallest that holds
        if index < len(self.free):
            n, address = self.free.pop(index)
            if n - size >= _MIN_CHUNK:
                bisect.insort(self.free, (n - size, address + size))
            else:
                size = n
        elif self.brk - self.top >= need + _MIN_CHUNK or size < self.threshold:
            if self.brk - self.top < need + _MIN_CHUNK:
                self.brk = _up(self.top + need + _TOP_PAD, _PAGE)
            address, self.top = self.top, self.top + size
        else:
            address, size = -1, _up(size + 64, _PAGE)
            self.mapped += size
        self.blocks[key] = (address, size)
        self.peak = max(self.peak, self.brk + self.mapped)

    def release(self, key: Hashable) -> None:
        address, size = self.blocks.pop(key)
        if address < 0:
            self.mapped -= size
            if self.threshold < size <= _THRESHOLD_MAX:
                self.threshold = size
        else:
            bisect.insort(self.free, (size, address))

    def end_step(self) -> None:
        """Frees what the step left, merges free neighbours, gives back the top past the trim."""
        for key in list(self.blocks):
            self.release(key)
        merged: list[list[int]] = []  # [address, size], by address
        for address, size in sorted((a, n) for n, a in self.free):
            if merged and merged[-1][0] + merged[-1][1] == address:
                merged[-1][1] += size
            else:
                merged.append([address, size])
        if merged and merged[-1][0] + merged[-1][1] == self.top:
            self.top = merged.pop()[0]
        self.free = sorted((size, address) for address, size in merged)
        if self.brk - self.top >= 2 * self.threshold:
            self.brk = _up(self.top + _TOP_PAD, _PAGE)


def heap_peak(events: Sequence[Event], steps: int = 2) -> int:
    """The peak bytes glibc holds for ``events`` (one step's allocations), run ``steps`` times.

    Each step starts from the heap the previous one left (the second one with the mmap
    threshold raised, as in a real fit; a third changed nothing on the models measured).
    What a step leaves allocated is freed at its end, as the next step's batch frees it.

    Example:
        >>> heap_peak([("x", 1 << 20), ("y", 1 << 20), ("x", None), ("y", None)])
        2232320
    """
    heap = _Heap()
    for step in range(steps):
        for key, nbytes in events:
            if nbytes is not None:
                heap.alloc((step, key), nbytes)
            elif (step, key) in heap.blocks:
                heap.release((step, key))
        heap.end_step()
    return heap.peak


def live_peak(events: Sequence[Event]) -> int:
    """The peak of the bytes ``events`` hold live at once (what a tensor trace counts).

    Example:
        >>> live_peak([("x", 100), ("y", 50), ("x", None), ("z", 20)])
        150
    """
    sizes: dict[Hashable, int] = {}
    live = peak = 0
    for key, nbytes in events:
        if nbytes is not None:
            sizes[key] = nbytes
            live += nbytes
            peak = max(peak, live)
        else:
            live -= sizes.pop(key, 0)
    return peak
