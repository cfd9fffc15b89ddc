"""The chunk bitmap (sparse pages, runs, iteration) and the transitions table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backing.pairs.bitmap import PAGE_BITS, ChunkBitmap
from backing.pairs.states import (
    TRANSITIONS,
    ErrorCode,
    Event,
    PairError,
    Phase,
    VolumeState,
    next_phase,
)


@given(st.sets(st.integers(0, 3 * PAGE_BITS + 100)), st.integers(0, 3 * PAGE_BITS + 100))
def test_bitmap_iterates_exactly_the_set_bits(bits: set[int], start: int) -> None:
    bm = ChunkBitmap(3 * PAGE_BITS + 101)
    for b in bits:
        bm.set(b)
    assert bm.count == len(bits)
    assert list(bm) == sorted(bits)
    assert list(bm.iter_from(start)) == sorted(b for b in bits if b >= start)
    for b in list(bits)[: len(bits) // 2]:
        assert bm.clear(b)
        bits.discard(b)
    assert list(bm) == sorted(bits) and bm.count == len(bits)


def test_bitmap_is_sparse_and_ranges_are_exact() -> None:
    chunks = (64 << 40) // (256 << 10)  # a 64 TiB pair at 256 KiB chunks
    bm = ChunkBitmap(chunks)
    bm.set(chunks - 1)
    bm.set_range(1000, 1000 + 2 * PAGE_BITS + 5)
    assert bm.count == 2 * PAGE_BITS + 6
    assert bm.memory_bytes == 4 * 4096  # four pages of 8192
    assert bm.first_from(0) == 1000 and bm.first_from(1001 + 2 * PAGE_BITS + 5) == chunks - 1
    full = ChunkBitmap(PAGE_BITS + 3)
    full.set_all()
    assert full.count == PAGE_BITS + 3 and not full.test(PAGE_BITS + 3)
    other = ChunkBitmap(PAGE_BITS + 3)
    other.update(full)
    assert other.count == full.count
    assert set(other.take_changed_pages()) == {0, 1}
    assert other.take_changed_pages() == {}


def test_split_leaves_source_split_and_target_pending() -> None:
    phase = next_phase(Phase.DUPLEX, Event.SPLIT)
    assert (phase.source, phase.target) == (VolumeState.SPLIT, VolumeState.SPLIT_PENDING)
    assert next_phase(phase, Event.REFLECTED) is Phase.SPLIT
    assert next_phase(Phase.SPLIT, Event.RESYNC) is Phase.RESYNC
    assert next_phase(Phase.RESYNC, Event.COPY_DONE) is Phase.DUPLEX


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("event", list(Event))
def test_every_pair_not_in_the_table_is_wrong_state(phase: Phase, event: Event) -> None:
    if (phase, event) in TRANSITIONS:
        assert next_phase(phase, event) is TRANSITIONS[(phase, event)]
    else:
        with pytest.raises(PairError) as err:
            next_phase(phase, event)
        assert err.value.code is ErrorCode.WRONG_STATE and err.value.phase is phase
