"""The RBD allocation map against a byte-per-unit model."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backing.rbd_allocation import SORTED_ABOVE, Allocation
from backing.sparse_file import Extent

SIZE = 64

ops = st.lists(st.tuples(st.booleans(), st.integers(0, SIZE), st.integers(0, SIZE)), max_size=40)


def model_extents(bits: list[bool], offset: int, length: int) -> list[Extent]:
    return model_extents_of(bits, offset, length)


def model_extents_of(bits: list[bool], offset: int, length: int) -> list[Extent]:
    out: list[Extent] = []
    end = min(offset + length, len(bits))
    for pos in range(offset, end):
        if out and out[-1].mapped == bits[pos]:
            last = out.pop()
            out.append(Extent(last.offset, last.length + 1, last.mapped))
        else:
            out.append(Extent(pos, 1, bits[pos]))
    return out


@pytest.mark.parametrize("sorted_above", [SORTED_ABOVE, 3, 0])
@settings(max_examples=300, deadline=None)
@given(ops, st.integers(0, SIZE - 1), st.integers(1, SIZE))
def test_matches_the_model(
    sorted_above: int, changes: list[tuple[bool, int, int]], offset: int, length: int
) -> None:
    """Plain lists, lists that turn into the sorted container on the way, and the sorted
    container from the first interval on, against the model."""
    alloc = Allocation(SIZE, sorted_above=sorted_above)
    bits = [False] * SIZE
    for add, a, b in changes:
        start, end = min(a, b), max(a, b)
        (alloc.add if add else alloc.remove)(start, end)
        bits[start:end] = [add] * (end - start)
    assert alloc.extents(offset, length) == model_extents(bits, offset, length)
    # Intervals stay disjoint and never touch: every boundary is a real change.
    iv = alloc.intervals()
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(iv))
    assert alloc.mapped_bytes() == sum(bits)


def test_adjacent_writes_merge_into_one_interval() -> None:
    alloc = Allocation(1 << 20)
    for i in range(256):
        alloc.add(i * 4096, (i + 1) * 4096)
    assert alloc.intervals() == [(0, 1 << 20)]
    alloc.remove(4096, 8192)
    assert alloc.intervals() == [(0, 4096), (8192, 1 << 20)]


@pytest.mark.parametrize("sorted_above", [SORTED_ABOVE, 1_000])
def test_thousands_of_intervals_match_the_model(sorted_above: int) -> None:
    """A map of thousands of intervals (an image written at random in 4 KiB), in plain
    lists and past the sorted container's chunk size: every other unit written, then
    random writes and discards, against the model."""
    size = 12_000
    alloc = Allocation(size, sorted_above=sorted_above)
    bits = [False] * size
    for pos in range(0, size, 2):
        alloc.add(pos, pos + 1)
        bits[pos] = True
    assert len(alloc) == size // 2
    rng = random.Random(12)
    for _ in range(3_000):
        start = rng.randrange(size)
        end = min(size, start + rng.choice((1, 2, 3, 7, 40, 500)))
        add = rng.random() < 0.5
        (alloc.add if add else alloc.remove)(start, end)
        bits[start:end] = [add] * (end - start)
    assert alloc.extents(0, size) == model_extents_of(bits, 0, size)
    iv = alloc.intervals()
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(iv))
    assert alloc.mapped_bytes() == sum(bits)
    for offset in (0, 1, 999, 5_001, size - 3):
        assert alloc.extents(offset, 777) == model_extents_of(bits, offset, 777)
