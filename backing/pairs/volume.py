"""A volume: a block store that a pair can attach to, as source or as target.

Every block LUN's store is wrapped in a :class:`PairVolume` when the daemon starts, so a
pair can be created, split and deleted while hosts keep writing: writes and deallocations
go through the attached pair (which marks chunks and copies before writing), reads of a
split-pending target merge in the chunks still on the source. Unpaired, every call goes
straight to the store underneath.

A volume is the source (primary) of up to :data:`MAX_SECONDARIES` pairs, each with its
own target (secondary), or the target of exactly one pair, never both. A host write to a
primary goes through every one of its pairs (``backing.pairs.fanout``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from backing.block_store import BlockStore
from backing.pairs.fanout import primary_write
from backing.sparse_file import Extent
from backing.write_now import read_now_of, write_now_of

if TYPE_CHECKING:
    from backing.pairs.engine import Pair

# Secondaries per primary, as ShadowImage allows (mirror units 0..2).
MAX_SECONDARIES = 3


def scope_of(volume_id: str) -> str:
    """The scope of a volume id ``<scope>/<volume>`` ("" without a slash)."""
    return volume_id.rpartition("/")[0]


class SentRead(Protocol):
    """A READ answered with a range of a volume's file that the transport sends later
    (sendfile): it has completed once released (scsi.task_set.Hold)."""

    def want(self) -> None: ...
    def when_released(self, done: Callable[[], None]) -> None: ...


class Role(Enum):
    SOURCE = "source"
    TARGET = "target"


class VolumeWriteProtected(Exception):
    """A host write reached the target of a mirroring pair (the LU normally refuses it
    earlier, as WRITE PROTECTED, through ``on_change``)."""


class PairVolume:
    """A :class:`BlockStore` that routes host I/O through the pair it belongs to, if any."""

    def __init__(self, volume_id: str, base: BlockStore, *, read_only: bool = False) -> None:
        self.volume_id = volume_id
        self.base = base
        self.size = base.size
        self.read_only = read_only
        # As a source: its pairs, by name (the order a host write passes through them, the
        # same for every write). As a target: its one pair.
        self.pairs: list[Pair] = []
        self.role: Role | None = None
        # Called after the pair's phase changes (the daemon updates the LU's WP flag).
        self.on_change: Callable[[], None] | None = None
        # Two gateways on one image (docs/rbd.md): the RADOS object that keeps the record
        # of a pair whose target this volume is (backing/pairs/cluster.py), and taking the
        # image's lock here, so a pair whose source this is runs on this gateway (False if
        # the other one keeps it). ``why`` is "pair" when no host write asks for it.
        self.record_object: Callable[[], Any] | None = None
        self.take_lock: Callable[[str], Awaitable[bool]] | None = None
        # Whether an error of this volume's store means this gateway was fenced (its client
        # blocklisted): a pair then stops here instead of going SUSPENDED.
        self.lost: Callable[[BaseException], bool] | None = None
        # Host writes in flight, by the attach generation they began in: a pair attached
        # later waits for those (drain) before it reads the source for its creation copy.
        self._generation = 0
        self._in_flight: dict[int, int] = {}
        self._drained: asyncio.Event | None = None
        # READs answered with a range of the base's file that the initiator may not have yet:
        # sendfile reads the pages when the socket takes them, and the socket keeps pointing
        # at them until the initiator has read them, so a write to the range shows in the
        # READ. The pair engine writes a range of this volume only once none covers it.
        self._sends: dict[SentRead, tuple[int, int]] = {}
        self._sent: asyncio.Event | None = None
        self._base_write_now = write_now_of(base)
        self._base_read_now = read_now_of(base)

    @property
    def pair(self) -> Pair | None:
        """The volume's pair (for a primary with several, the first by name; use
        :attr:`pairs` where several can be)."""
        return self.pairs[0] if self.pairs else None

    def fenced_by(self) -> Pair | None:
        """The pair whose reverse resync is restoring this primary, if any."""
        if self.role is Role.SOURCE:
            for pair in self.pairs:  # on every read of a primary: a plain loop
                if pair.phase.source_fenced:
                    return pair
        return None

    @property
    def write_protected(self) -> bool:
        pair = self.pair
        if pair is None:
            return False
        if self.role is Role.SOURCE:
            return self.fenced_by() is not None
        return not pair.phase.target_writable

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- the store interface ------------------------------------------------------------
    def read_into(self, offset: int, buf: memoryview) -> Coroutine[Any, Any, None]:
        """The read's coroutine, from the pair or the store (no frame of ours per read)."""
        pair = self.pair
        if pair is not None and self.role is Role.TARGET:
            return pair.read_target(offset, buf)
        if self.role is Role.SOURCE and (fenced := self.fenced_by()) is not None:
            return fenced.read_source(offset, buf)
        return self.base.read_into(offset, buf)

    def write_now(self, offset: int, data: memoryview) -> bool:
        """The base store's synchronous small write (backing/write_now.py), for a volume in
        no pair: nothing waits inside it, so no pair can attach while it runs and it needs
        no place in the in-flight count. False (nothing written) otherwise."""
        if self.pairs:
            return False
        base_write_now = self._base_write_now
        return base_write_now is not None and base_write_now(offset, data)

    def read_now(self, offset: int, buf: memoryview) -> bool:
        """The base store's synchronous read (backing/write_now.py), for a volume in no
        pair (a pair's volume is read through it: merged, or restored). False (``buf`` to
        be filled by :meth:`read_into`) otherwise."""
        if self.pairs:
            return False
        base_read_now = self._base_read_now
        return base_read_now is not None and base_read_now(offset, buf)

    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        if self.pairs:
            op = lambda: self.base.write(offset, data, fua=fua)  # noqa: E731
            await self._host_write(offset, len(data), op)
            return
        # An unpaired volume (the 4 KiB write's hot path): _host_write's in-flight count
        # without its frame and closure. A pair attached while this waits finds it in the
        # count and drains it, as for any host write.
        began = self._generation
        self._in_flight[began] = self._in_flight.get(began, 0) + 1
        try:
            await self.base.write(offset, data, fua=fua)
        finally:
            self._host_write_done(began)

    async def punch_hole(self, offset: int, length: int) -> None:
        await self._host_write(offset, length, lambda: self.base.punch_hole(offset, length))

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self._host_write(offset, length, lambda: self.base.write_zeroes(offset, length))

    async def write_by(self, offset: int, length: int, op: Callable[[], Awaitable[None]]) -> None:
        """Run ``op``, which writes ``[offset, offset+length)`` of the base store by other
        means (a kernel copy into its file), as a host write: the pair marks its bitmaps
        and copies before writing exactly as for :meth:`write`."""
        await self._host_write(offset, length, op)

    async def compare_and_write(
        self, offset: int, expected: bytes | memoryview, data: bytes | memoryview,
        *, fua: bool = False,
    ) -> int | None:  # fmt: skip
        """The base store's atomic compare and write (an RBD image), as a host write.
        NotImplementedError where it cannot serve: the base has none, or this volume is a
        pair's target, whose reads may merge in chunks still on the source."""
        atomic = getattr(self.base, "compare_and_write", None)
        if atomic is None or (self.pair is not None and self.role is Role.TARGET):
            raise NotImplementedError("no atomic compare and write here")
        result: list[int | None] = []

        async def op() -> None:
            result.append(await atomic(offset, expected, data, fua=fua))

        await self._host_write(offset, len(data), op)
        return result[0]

    async def flush(self) -> None:
        await self.base.flush()

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.base.extents(offset, length)

    def grow(self, size: int) -> None:
        """Grow the base to ``size`` bytes. Refused while the volume is in a pair: a pair's
        volumes keep the size recorded at its creation (its bitmap covers that many chunks,
        and a resync copies that many bytes), so one grown alone would break the pair."""
        if self.pairs:
            names = ", ".join(p.name for p in self.pairs)
            raise ValueError(f"it is in pair {names}: the volumes of a pair keep equal sizes")
        grow = getattr(self.base, "grow", None)
        if grow is None:
            raise ValueError("its store cannot grow")
        grow(size)
        self.size = self.base.size

    def close(self) -> None:
        close = getattr(self.base, "close", None)
        if close is not None:
            close()

    def leave_loop(self) -> None:
        """Before :meth:`close` runs on a worker thread: what the base (an RBD image) has
        bound to the event loop leaves it."""
        leave = getattr(self.base, "leave_loop", None)
        if leave is not None:
            leave()

    # -- attaching ----------------------------------------------------------------------
    async def _host_write(
        self, offset: int, length: int, op: Callable[[], Awaitable[None]]
    ) -> None:
        began = self._generation
        self._in_flight[began] = self._in_flight.get(began, 0) + 1
        try:
            pairs = self.pairs
            if not pairs:
                await op()
            elif self.role is Role.TARGET:
                await pairs[0].host_write(Role.TARGET, offset, length, op)
            elif len(pairs) == 1:
                await pairs[0].host_write(Role.SOURCE, offset, length, op)
            else:
                await primary_write(list(pairs), offset, length, op)
        finally:
            self._host_write_done(began)

    def _host_write_done(self, began: int) -> None:
        left = self._in_flight[began] - 1
        if left:
            self._in_flight[began] = left
        else:
            del self._in_flight[began]
            if self._drained is not None:
                self._drained.set()

    async def drain(self) -> None:
        """Wait until no host write that began before the last attach is still running
        (it did not go through the pair attached since)."""
        now = self._generation
        while any(began < now for began in self._in_flight):
            self._drained = asyncio.Event()
            await self._drained.wait()
        self._drained = None

    # -- READs still being sent from the file ---------------------------------------------
    def sending(self, offset: int, length: int, read: SentRead) -> None:
        """``[offset, offset+length)`` of the base's file is being sent for ``read``."""
        self._sends[read] = (offset, offset + length)
        read.when_released(partial(self._sent_done, read))

    def _sent_done(self, read: SentRead) -> None:
        del self._sends[read]
        if self._sent is not None:
            self._sent.set()
            self._sent = None

    def sends_over(self, offset: int, length: int) -> bool:
        """Whether a READ still being sent from the file overlaps ``[offset,
        offset+length)``."""
        end = offset + length
        return any(s < end and offset < e for s, e in self._sends.values())

    async def unsent(self, offset: int, length: int) -> None:
        """Wait until no READ still being sent from the file overlaps ``[offset,
        offset+length)``; their initiators are asked to acknowledge them now. The pair
        engine calls it before it writes the base's file. No new such READ begins then: a
        volume the engine writes is a pair's target or a source being restored, whose
        READs are read into buffers."""
        end = offset + length
        while True:
            sends = self._sends
            if not sends:
                return
            overlapping = [read for read, (s, e) in sends.items() if s < end and offset < e]
            if not overlapping:
                return
            for read in overlapping:
                read.want()
            if self._sent is None:
                self._sent = asyncio.Event()
            await self._sent.wait()

    def attach(self, pair: Pair, role: Role) -> None:
        if role is Role.TARGET or self.role is Role.TARGET:
            assert not self.pairs, f"{self.volume_id} is in a pair already"
        assert len(self.pairs) < MAX_SECONDARIES
        # By name: the same order after a restart (PAIR IN reports the first one).
        self.pairs = sorted([*self.pairs, pair], key=lambda p: p.name)
        self.role = role
        self._generation += 1
        self.changed()

    def detach(self, pair: Pair | None = None) -> None:
        """Leave ``pair`` (None: every pair)."""
        self.pairs = [p for p in self.pairs if pair is not None and p is not pair]
        if not self.pairs:
            self.role = None
        self.changed()
