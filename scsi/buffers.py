"""Data buffers for large transfers: a daemon-wide pool, and leases charged to a budget.

A fresh ``bytearray`` of 1 MiB costs more than reading 1 MiB from the page cache into it
(it is zero-filled, often on newly mapped pages), so buffers are reused: the pool keeps
returned buffers, up to ``max_bytes`` for the whole daemon, and hands them out again.

A buffer in use is a lease with an owner (:class:`Leases`, one per command): the owner
charges its :class:`Account` when it takes a buffer and gives everything back in one call,
on every path -- completion, failure, abort, a closed connection. The accounts of all
connections share one :class:`MemoryBudget`, which is how one client's commands are kept
from growing the daemon's memory without bound (see docs/iscsi.md, "Memory").

Only buffers this pool lent are taken back, so a handler that returns a buffer it keeps
(a mode page, say) can never have it recycled under it. A lent buffer holds old data:
whoever takes one must fill every byte it hands on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# Below this, allocating is cheap and pooling not worth the bookkeeping.
POOL_MIN_SIZE = 64 * 1024


class Allocator(Protocol):
    """Where the SCSI layer gets its large Data-In buffers."""

    def take(self, size: int) -> bytearray: ...


class BufferPool:
    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._free: dict[int, list[bytearray]] = {}
        self._free_bytes = 0
        # By id, holding the buffer itself: while it is lent, its id cannot be reused by
        # another object, so the identity check in give() is exact.
        self._lent: dict[int, bytearray] = {}

    def take(self, size: int) -> bytearray:
        """A buffer of exactly ``size`` bytes, contents undefined."""
        if size < POOL_MIN_SIZE:
            return bytearray(size)
        free = self._free.get(size)
        if free:
            buf = free.pop()
            self._free_bytes -= size
        else:
            buf = bytearray(size)
        self._lent[id(buf)] = buf
        return buf

    def give(self, buf: object, *, reuse: bool = True) -> None:
        """Return a buffer; anything this pool did not lend is ignored.

        ``reuse=False`` forgets the buffer without lending it again: for one that a
        thread still cancelled under it may yet write into.
        """
        if not isinstance(buf, bytearray) or self._lent.get(id(buf)) is not buf:
            return
        del self._lent[id(buf)]
        size = len(buf)
        if reuse and self._free_bytes + size <= self.max_bytes:
            self._free.setdefault(size, []).append(buf)
            self._free_bytes += size

    @property
    def lent(self) -> int:
        return len(self._lent)

    @property
    def free_bytes(self) -> int:
        return self._free_bytes


class MemoryBudget:
    """The buffers of all connections together stay within ``limit`` bytes.

    Each of up to ``accounts`` accounts has a guaranteed share (a quarter of ``limit``
    split evenly) that it may always use; beyond its share an account draws on the
    common rest, first come first served, up to its own ``account_limit``. So a
    connection that holds much -- a client that never reads its answers, or announces
    writes and never sends the data -- slows only itself, and every other connection can
    still run commands that fit its share.
    """

    def __init__(self, limit: int, accounts: int, account_limit: int) -> None:
        self.limit = limit
        self.account_limit = account_limit
        self.share = limit // (4 * max(accounts, 1))
        self.common = limit - self.share * max(accounts, 1)
        self.used = 0
        self.beyond_shares = 0  # bytes accounts hold beyond their shares
        self._waiting: dict[Account, None] = {}

    def account(self, on_room: Callable[[], None] = lambda: None) -> Account:
        return Account(self, on_room)

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for account in waiting:
            account.on_room()


class Account:
    """One connection's buffers: what it holds now, and whether more fits."""

    __slots__ = ("budget", "on_room", "used", "waiting")

    def __init__(self, budget: MemoryBudget, on_room: Callable[[], None]) -> None:
        self.budget = budget
        self.on_room = on_room
        self.used = 0
        self.waiting = False  # something waits for this account to have room

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes may be taken now. If not, ``on_room`` is called
        once they might (when this account or, beyond its share, any account gives back)."""
        budget = self.budget
        after = self.used + size
        if after <= budget.share:
            return True
        if after <= budget.account_limit:
            grow = after - max(self.used, budget.share)
            if budget.beyond_shares + grow <= budget.common:
                return True
            budget._waiting[self] = None
        self.waiting = True
        return False

    def charge(self, size: int) -> None:
        budget = self.budget
        share = budget.share
        before = self.used
        self.used = before + size
        budget.used += size
        if self.used > share:
            budget.beyond_shares += self.used - max(before, share)

    def credit(self, size: int) -> None:
        budget = self.budget
        share = budget.share
        before = self.used
        self.used = before - size
        budget.used -= size
        if before > share:
            budget.beyond_shares -= before - max(self.used, share)
            if budget._waiting:
                budget._wake()
        if self.waiting:
            self.waiting = False
            self.on_room()


class Leases:
    """The buffers one command holds, charged to its connection's account."""

    __slots__ = ("account", "held", "pool", "reserved")

    def __init__(self, pool: BufferPool, account: Account, reserve: int = 0) -> None:
        self.pool = pool
        self.account = account
        self.held: list[bytearray] = []
        # Charged ahead, for a command admitted before it takes its buffer: the take
        # draws on it, so commands admitted together cannot overrun the account.
        self.reserved = reserve
        if reserve:
            account.charge(reserve)

    def take(self, size: int) -> bytearray:
        buf = self.pool.take(size)
        covered = min(size, self.reserved)
        self.reserved -= covered
        if size > covered:
            self.account.charge(size - covered)
        self.held.append(buf)
        return buf

    def settle(self) -> None:
        """The command is done taking: give back what it reserved and did not take."""
        if self.reserved:
            self.account.credit(self.reserved)
            self.reserved = 0

    def release(self, *, reuse: bool = True) -> None:
        """Give every buffer back (idempotent). ``reuse=False``: a thread may still write
        into them, so the pool forgets them instead of lending them again."""
        held = self.held
        total = self.reserved
        self.reserved = 0
        if held:
            self.held = []
            give = self.pool.give
            for buf in held:
                total += len(buf)
                give(buf, reuse=reuse)
        if total:
            self.account.credit(total)
