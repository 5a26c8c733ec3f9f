"""The glibc heap model a PyTorch CPU step's allocations are replayed through (pure).

Each rule of ``backends/glibc_heap.py`` on a sequence small enough to follow by hand; the
model against real fits is in tests/test_estimate_fit.py.
"""

from __future__ import annotations

from keras_memguard.backends.glibc_heap import heap_peak, live_peak

MIB = 2**20


def test_a_freed_block_does_not_hold_the_next_tensor_of_its_size():
    # from the second step on (the mmap threshold raised by the first), in the heap:
    same = [("a", 8 * MIB), ("a", None), ("b", 8 * MIB), ("b", None)]
    assert live_peak(same) == 8 * MIB
    assert heap_peak(same) > 16 * MIB  # memalign needs 96 B more than the block freed
    smaller = [("a", 8 * MIB), ("a", None), ("b", 8 * MIB - 4096), ("b", None)]
    assert heap_peak(smaller) < 9 * MIB  # a smaller tensor takes the freed block


def test_freed_neighbours_merge_only_at_the_end_of_the_step():
    halves = [("a", 4 * MIB), ("b", 4 * MIB), ("a", None), ("b", None)]
    whole = [("c", 8 * MIB - 4096), ("c", None)]
    # within one step, the two freed halves stay two blocks: the whole goes on top
    assert heap_peak(halves + whole, steps=2) > 16 * MIB
    # at the step's end they merge: the next step's whole fits them, the heap stays
    first = whole + halves
    assert heap_peak(first, steps=3) == heap_peak(first, steps=2)


def test_a_first_large_block_is_mapped_and_given_back():
    once = [("a", 8 * MIB), ("a", None)]
    assert 8 * MIB < heap_peak(once, steps=1) < 8 * MIB + 8192  # mmap: no heap kept
    # freeing it raised the threshold: the next step takes it from the heap (+128 KiB pad)
    assert 8 * MIB + 128 * 1024 < heap_peak(once, steps=2) < 9 * MIB


def test_live_peak_counts_what_is_held_at_once():
    assert live_peak([("x", 100), ("y", 50), ("x", None), ("z", 20)]) == 150
    assert live_peak([("x", None)]) == 0  # a free of something made before: ignored
