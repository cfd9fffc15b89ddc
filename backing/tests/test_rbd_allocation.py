"""The RBD allocation map against a byte-per-unit model."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from backing.rbd_allocation import Allocation
from backing.sparse_file import Extent

SIZE = 64

ops = st.lists(st.tuples(st.booleans(), st.integers(0, SIZE), st.integers(0, SIZE)), max_size=40)


def model_extents(bits: list[bool], offset: int, length: int) -> list[Extent]:
    out: list[Extent] = []
    end = min(offset + length, SIZE)
    for pos in range(offset, end):
        if out and out[-1].mapped == bits[pos]:
            last = out.pop()
            out.append(Extent(last.offset, last.length + 1, last.mapped))
        else:
            out.append(Extent(pos, 1, bits[pos]))
    return out


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(0, SIZE - 1), st.integers(1, SIZE))
def test_matches_the_model(changes: list[tuple[bool, int, int]], offset: int, length: int) -> None:
    alloc = Allocation(SIZE)
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
