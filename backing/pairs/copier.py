"""A pair's chunk copies: the per-chunk tickets, the copy workers and their pacing, the
copy of one chunk (and its failure), the end of a copy phase, and the bitmap writer.

A copy holds a chunk's *ticket* (one copy of a chunk at a time); a host write that runs
at any moment of a mirroring copy *spoils* it, and a spoiled copy leaves the bit set for
a later copy. Workers skip chunks being written while mirroring; split-mode copies wait
for writers instead (only pre-split ones can be running).

:class:`ChunkCopier` is part of :class:`backing.pairs.engine.Pair`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from backing.pairs.bitmap import ChunkBitmap
from backing.pairs.journal import WriteIntentLog
from backing.pairs.settings import PairSettings
from backing.pairs.states import Event, Phase, SuspendReason, next_phase

if TYPE_CHECKING:
    from backing.pairs.volume import PairVolume

log = logging.getLogger("backing.pairs.engine")

COPY_SET, SRC_CHANGED, TGT_CHANGED = 0, 1, 2
FAILED_LOOP_PAUSE = 1.0  # seconds a background loop waits after a failure before it resumes


async def _read_chunk(source: Any, offset: int, length: int) -> bytearray | None:
    """A chunk's bytes, or None where the store has a hole (the copy punches one)."""
    if not any(e.mapped for e in source.extents(offset, length)):
        return None
    buf = bytearray(length)
    await source.read_into(offset, memoryview(buf))
    return buf


def _reason_of(err: BaseException, os_reason: SuspendReason) -> SuspendReason:
    """An OSError is a disk's (``os_reason``); anything else is a bug: INTERNAL_ERROR."""
    return os_reason if isinstance(err, OSError) else SuspendReason.INTERNAL_ERROR


class _Ticket:
    """A copy (or a split-image read) of one chunk in progress."""

    __slots__ = ("done", "from_head", "spoiled")

    def __init__(self, spoiled: bool) -> None:
        self.spoiled = spoiled
        self.from_head = False  # reads the source image itself, not its split snapshot
        self.done = asyncio.Event()


class _Pacer:
    """A token bucket over bytes; rate 0 lets everything through."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._allowance = 0.0
        self._last = time.monotonic()

    async def take(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
        self._last = now
        self._allowance -= nbytes
        if self._allowance < 0:
            await asyncio.sleep(-self._allowance / self.rate)


class ChunkCopier:
    """The copying part of a pair (its state lives on the pair)."""

    name: str
    phase: Phase
    source: PairVolume
    target: PairVolume
    size: int
    chunk_size: int
    settings: PairSettings
    journal: WriteIntentLog
    copy_set: ChunkBitmap
    copied_bytes: int
    _samples: deque[tuple[float, int]]
    _tickets: dict[int, _Ticket]
    _claimed: set[int]
    _writers: dict[int, int]
    _writer_waits: dict[int, asyncio.Event]
    _work: asyncio.Event
    _cursor: int
    _finishing: bool
    _pacer: _Pacer
    _jobs: set[asyncio.Future[None]]
    _awaiting_reads: set[asyncio.Task[Any]]
    _stopping: bool
    _clears_unsynced: bool
    _frozen: Any

    if TYPE_CHECKING:  # the pair's own, for the type checker

        async def _fail(self, reason: SuspendReason, err: BaseException) -> None: ...

        def _set_phase(self, phase: Phase) -> None: ...

        async def _write_header(self) -> None: ...

        def _split_source(self) -> Any: ...

        def _chunk_range(self, offset: int, length: int) -> range: ...

    async def _guarded(
        self,
        body: Callable[[], Awaitable[None]],
        what: str,
        os_reason: SuspendReason = SuspendReason.PAIR_FILE_ERROR,
    ) -> None:
        """Run a background loop for the pair's life: whatever it raises is logged and
        the pair goes SUSPENDED with the reason, and the loop runs again (it must be there
        for a resync). Never a silent stall."""
        while True:
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if self.phase in (Phase.SUSPENDED, Phase.DELETE):
                    # Already reported: a fault that persists is not logged every second.
                    log.debug("pair %s: %s failed again: %r", self.name, what, err)
                else:
                    log.exception("pair %s: %s failed", self.name, what)
                    await self._fail(_reason_of(err, os_reason), err)
                await asyncio.sleep(FAILED_LOOP_PAUSE)  # a fault that repeats cannot spin

    @contextlib.asynccontextmanager
    async def _hold(self, c: int, *, wait_writers: bool) -> AsyncIterator[_Ticket]:
        """Be the only copy of chunk ``c``; with ``wait_writers``, also wait until no host
        write to it is running (after a split, only pre-split writers can be)."""
        while True:
            other = self._tickets.get(c)
            if other is not None:
                await other.done.wait()
                continue
            if wait_writers and self._writers.get(c):
                wait = self._writer_waits.setdefault(c, asyncio.Event())
                await wait.wait()
                continue
            break
        ticket = self._tickets[c] = _Ticket(spoiled=bool(self._writers.get(c)))
        try:
            yield ticket
        finally:
            del self._tickets[c]
            ticket.done.set()
            # A worker that found only this chunk (held) went to sleep: whether the copy
            # cleared it (the set may be empty now: finish) or left it, it looks again.
            self._work.set()

    async def _copy_chunk(self, c: int) -> None:
        reverse = self.phase is Phase.REVERSE_COPY
        split_mode = self.phase is Phase.SPLIT_PENDING or reverse
        to = self.source if reverse else self.target
        async with self._hold(c, wait_writers=split_mode) as ticket:
            if c not in self.copy_set:
                return
            offset, length = self._chunk_span(c)
            # The reason names the volume that failed (reverse: reading the target, writing
            # the source).
            read_fault = SuspendReason.SOURCE_READ_ERROR
            write_fault = SuspendReason.TARGET_WRITE_ERROR
            if reverse:
                read_fault, write_fault = write_fault, read_fault
                source = self.target.base
            else:
                source = self._split_source() if split_mode else self.source.base
            ticket.from_head = source is self.source.base
            try:
                data = await _read_chunk(source, offset, length)
            except Exception as err:
                await self.copy_failed(c, read_fault, err)
                raise
            await self._store(c, ticket, to, data, write_fault)

    def _chunk_span(self, c: int) -> tuple[int, int]:
        offset = c * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    async def _store(
        self,
        c: int,
        ticket: _Ticket,
        to: PairVolume,
        data: bytearray | None,
        write_fault: SuspendReason,
    ) -> None:
        """Write a copied chunk (None: a hole) to ``to`` and clear its copy-set bit unless
        a host write spoiled the copy meanwhile."""
        offset, length = self._chunk_span(c)
        try:
            # A READ answered before the volume became this pair's target (or before a
            # reverse resync fenced the source) may still be sent from the file.
            if to.sends_over(offset, length):
                if self._stopping:
                    raise asyncio.CancelledError  # given up: the chunk stays to copy
                me = asyncio.current_task()
                assert me is not None
                self._awaiting_reads.add(me)
                try:
                    await to.unsent(offset, length)
                finally:
                    self._awaiting_reads.discard(me)
            if data is None:
                await to.base.punch_hole(offset, length)
            else:
                await to.base.write(offset, memoryview(data))
        except Exception as err:
            await self.copy_failed(c, write_fault, err)
            raise
        if not ticket.spoiled:
            self.journal.clear(COPY_SET, c)
            self._clears_unsynced = True
        self.copied_bytes += length
        self._samples.append((time.monotonic(), length))

    async def copy_failed(self, c: int, side: SuspendReason, err: BaseException) -> None:
        """Whoever asked for the copy (a worker, a host write's copy-before-write, a
        backup's reflect-first) gets the error; the pair stops copying either way."""
        log.error("pair %s: copying chunk %d failed", self.name, c, exc_info=err)
        reason = side if isinstance(err, OSError) else SuspendReason.INTERNAL_ERROR
        await self._fail(reason, err)

    # -- a primary with several secondaries (backing.pairs.fanout) --------------------------
    def cow_pending(self, c: int) -> bool:
        """A host write to the primary's chunk ``c`` must first copy it to this target."""
        return self.phase is Phase.SPLIT_PENDING and self._frozen is None and c in self.copy_set

    def hold_chunk(self, c: int) -> contextlib.AbstractAsyncContextManager[_Ticket]:
        """The chunk's copy ticket, once no host write to it runs (a split-mode copy)."""
        return self._hold(c, wait_writers=True)

    async def read_split_chunk(self, c: int) -> bytearray | None:
        """Chunk ``c`` of the primary (None: a hole); a failure suspends the pair."""
        offset, length = self._chunk_span(c)
        try:
            return await _read_chunk(self.source.base, offset, length)
        except Exception as err:
            await self.copy_failed(c, SuspendReason.SOURCE_READ_ERROR, err)
            raise

    async def deliver_chunk(self, c: int, ticket: _Ticket, data: bytearray | None) -> None:
        """Chunk ``c``'s split-instant content, read once for several pairs of the
        primary, written to this pair's target (under this pair's ``ticket``)."""
        ticket.from_head = True
        await self._store(c, ticket, self.target, data, SuspendReason.TARGET_WRITE_ERROR)

    async def _reflect_chunks(self, chunks: list[int]) -> None:
        for c in chunks:
            # A copy spoiled by a concurrent writer (only while mirroring) leaves the bit.
            while c in self.copy_set and self.phase is Phase.SPLIT_PENDING:
                await self._copy_chunk(c)
            if self.phase is not Phase.SPLIT_PENDING:
                return

    def _next_chunk(self) -> int | None:
        split_mode = self.phase in (Phase.SPLIT_PENDING, Phase.REVERSE_COPY)
        for start in (self._cursor, 0):
            for c in self.copy_set.iter_from(start):
                if (
                    c in self._tickets
                    or c in self._claimed
                    or (not split_mode and c in self._writers)
                ):
                    continue
                self._cursor = c + 1
                return c
        return None

    async def _worker(self) -> None:
        while True:
            # Cleared before looking, so a wake-up during the awaits below is not lost.
            self._work.clear()
            if self.phase.mirroring or self.phase in (Phase.SPLIT_PENDING, Phase.REVERSE_COPY):
                c = self._next_chunk()
                if c is not None:
                    # Claimed from the choice on, not from when the copy takes its ticket
                    # (a turn of the loop later, or after the pacer's sleep): another worker
                    # woken meanwhile picks another chunk rather than a second copy of this
                    # one waiting for the first. Host writes' copies still take the ticket.
                    self._claimed.add(c)
                    job = None
                    try:
                        await self._pacer.take(self.chunk_size)
                        job = asyncio.ensure_future(self._copy_chunk(c))
                        self._jobs.add(job)
                        job.add_done_callback(self._jobs.discard)
                        job.add_done_callback(partial(self._unclaim, c))
                        await asyncio.shield(job)
                    except Exception as err:
                        # Logged, and the pair SUSPENDED, by _copy_chunk: nothing copies now
                        # (unless fenced: then it stops soon, and must not spin meanwhile).
                        log.debug("pair %s: worker idle after %r", self.name, err)
                        if self.phase is not Phase.SUSPENDED:
                            await asyncio.sleep(FAILED_LOOP_PAUSE)
                    finally:
                        if job is None:  # stopped in the pacer: never copied
                            self._unclaim(c)
                    continue
                before = self.phase
                await self._maybe_finish()
                if self.phase is not before:  # changed while finishing: look again
                    continue
            await self._work.wait()

    def _unclaim(self, c: int, _job: object = None) -> None:
        """A worker's copy of chunk ``c`` ended: any worker may take the chunk again (a
        spoiled copy left its bit), so they look again."""
        self._claimed.discard(c)
        self._work.set()

    async def _maybe_finish(self) -> None:
        if self.copy_set.count or self._tickets or self._finishing:
            return
        phase = self.phase
        if phase is Phase.SPLIT_PENDING:
            self._finishing = True
            try:
                # SPLIT promises an empty split set on disk: clear bits and target first.
                await self.journal.commit()
                if self.phase is phase and not self.copy_set.count:
                    self._set_phase(next_phase(phase, Event.REFLECTED))
                    await self._write_header()
            finally:
                self._finishing = False
        elif phase in (Phase.DUPLEX_PENDING, Phase.RESYNC):
            self._set_phase(next_phase(phase, Event.COPY_DONE))
            await self._write_header()
        elif phase is Phase.REVERSE_COPY:
            self._finishing = True
            try:  # DUPLEX promises the restored source on disk with an empty copy set
                self._clears_unsynced = True
                await self.journal.commit()
                if self.phase is phase and not self.copy_set.count:
                    self._set_phase(next_phase(phase, Event.COPY_DONE))
                    await self._write_header()
            finally:
                self._finishing = False

    async def _sync_target_for_clears(self) -> None:
        """Before cleared bits reach the disk, the target data they vouch for must."""
        if self._clears_unsynced:
            self._clears_unsynced = False
            await self.target.base.flush()
            if self.phase is Phase.REVERSE_COPY:
                await self.source.base.flush()  # the reverse copies' destination

    async def _lazy_committer(self) -> None:
        aged = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.lazy_commit)
            if time.monotonic() - aged >= self.settings.clear_delay:
                aged = time.monotonic()
                self.journal.age()
            if self.journal.pending():
                # A failure here is the pair file's: _guarded logs it and suspends the pair.
                await self.journal.commit()
