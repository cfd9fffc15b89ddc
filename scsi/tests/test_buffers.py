"""BufferPool: reuse by size, never take back what it did not lend, bounded."""

from __future__ import annotations

from scsi.buffers import POOL_MIN_SIZE, BufferPool


def test_reuses_a_returned_buffer_of_the_same_size() -> None:
    pool = BufferPool()
    a = pool.take(1 << 20)
    pool.give(a)
    assert pool.take(1 << 20) is a
    assert pool.take(1 << 20) is not a


def test_ignores_buffers_it_did_not_lend() -> None:
    pool = BufferPool()
    foreign = bytearray(1 << 20)
    pool.give(foreign)
    assert pool.take(1 << 20) is not foreign
    a = pool.take(1 << 20)
    pool.give(a)
    pool.give(a)  # a second return is ignored too
    assert pool.take(1 << 20) is a
    assert pool.take(1 << 20) is not a


def test_small_buffers_are_not_pooled_and_the_pool_is_bounded() -> None:
    pool = BufferPool(max_bytes=2 << 20)
    small = pool.take(POOL_MIN_SIZE - 1)
    pool.give(small)
    assert pool.take(POOL_MIN_SIZE - 1) is not small
    bufs = [pool.take(1 << 20) for _ in range(3)]
    for b in bufs:
        pool.give(b)
    again = {id(pool.take(1 << 20)) for _ in range(3)}
    assert len(again & {id(b) for b in bufs}) == 2
    assert pool.lent == 3
