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


def test_refuses_a_stranger_that_took_the_id_of_a_lost_buffer() -> None:
    # A lent buffer that is never given back dies; a new bytearray may then get its id().
    # The pool must still tell the stranger from the buffer it lent.
    pool = BufferPool()
    lost = pool.take(1 << 16)
    lost_id = id(lost)
    del lost
    strangers = []
    for _ in range(10000):
        candidate = bytearray(1 << 16)
        strangers.append(candidate)
        if id(candidate) == lost_id:
            break
    stranger = strangers[-1]
    pool.give(stranger)
    assert pool.take(1 << 16) is not stranger


def test_budget_shares_and_the_common_rest() -> None:
    from scsi.buffers import MemoryBudget

    budget = MemoryBudget(400 << 20, accounts=4, account_limit=200 << 20)
    assert budget.share == 25 << 20 and budget.common == 300 << 20
    greedy, modest = budget.account(), budget.account()
    woken: list[str] = []
    other = budget.account(lambda: woken.append("other"))
    assert greedy.fits(200 << 20) and not greedy.fits((200 << 20) + 1)  # its own limit
    greedy.charge(200 << 20)
    modest.charge(100 << 20)
    # The common rest is used up (175 + 75 of 300 beyond shares is 250; 100 more is not).
    assert not other.fits(100 << 20)
    # Within its share an account always proceeds, whatever the others hold.
    assert other.fits(25 << 20)
    greedy.credit(100 << 20)
    assert woken == ["other"]
    assert other.fits(100 << 20)
    assert budget.used == 200 << 20


def test_leases_give_everything_back_once() -> None:
    from scsi.buffers import Leases, MemoryBudget

    pool = BufferPool()
    account = MemoryBudget(1 << 30, 1, 64 << 20).account()
    leases = Leases(pool, account, reserve=1 << 20)
    assert account.used == 1 << 20
    buf = leases.take(1 << 20)  # drawn on the reservation
    assert account.used == 1 << 20
    leases.take(4096)
    assert account.used == (1 << 20) + 4096
    leases.release()
    leases.release()
    assert account.used == 0 and pool.lent == 0
    assert pool.take(1 << 20) is buf
    cancelled = Leases(pool, account)
    kept = cancelled.take(1 << 20)
    cancelled.release(reuse=False)  # a thread may still write into it
    assert account.used == 0 and pool.take(1 << 20) is not kept
