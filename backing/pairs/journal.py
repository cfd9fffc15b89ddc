"""The pair file: the pair's definition and phase, and its bitmaps as a write-intent log.

Layout (one file per pair, ``<state_dir>/pairs/<name>.pair``)::

    0     header slot 0 (2 KiB)  \\  the valid slot with the higher sequence wins, so a
    2048  header slot 1 (2 KiB)  /   torn header write leaves the previous one in force
    4096  region 0: the copy set (dirty chunks; after a split, the split-instant set)
    ...   region 1: source chunks written since the split
    ...   region 2: target chunks written since the split

Each region is ``npages`` pages of 4 KiB at a fixed offset; untouched pages are holes.
A slot is ``magic, seq u64, length u32, crc32 u32, JSON``.

Durability rule (as Linux md's write-intent bitmap): a bit is on disk before the host
write it covers is acknowledged; cleared bits reach the disk lazily, and only after the
target's data they vouch for has been synced. :class:`WriteIntentLog` batches concurrent
requests into one ``fdatasync`` (group commit).

Every write and sync of a pair file runs on the file's own two threads (one for the
header, one for the bitmap pages), never on the event loop and never queued behind data
I/O on the loop's shared executor (chunk copies, a target's flush, a hole punched through
a whole volume): a SPLIT waits for one header sync and nothing else.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from backing.durable import sync_directory
from backing.pairs.bitmap import PAGE_BYTES, ChunkBitmap
from backing.pairs.record_io import Lane, decode_slot, encode_slot

MAGIC = b"TDPAIR01"
SLOT_BYTES = 2048
HEADER_BYTES = 2 * SLOT_BYTES
REGIONS = 3  # copy set, source changed, target changed
T = TypeVar("T")


class PairRecord(Protocol):
    """Where a pair's header and bitmaps are kept: a :class:`PairFile` in the state dir,
    or a record in the cluster (:mod:`backing.pairs.cluster`, two gateways)."""

    npages: int

    @property
    def closed(self) -> bool: ...
    async def commit_header(self, meta: dict[str, Any]) -> None: ...
    async def commit_pages(self, pages: list[tuple[int, int, bytes]]) -> None: ...
    async def discard(self) -> None: ...
    def close(self) -> None: ...


class PairFileError(Exception):
    """The pair file is unreadable (no valid header slot)."""


class PairFile:
    """Positional access to one pair file. The blocking calls run on the file's own
    threads through :meth:`commit_header` and :meth:`commit_pages`."""

    def __init__(self, path: Path, fd: int, npages: int, seq: int) -> None:
        self.path = path
        self.fd = fd
        self.npages = npages
        self.seq = seq
        # Two lanes: a header sync (SPLIT) never waits behind a bitmap sync, or the reverse.
        # Each lane's callers take turns already (the pair's header lock, the log's runner).
        self._header_lane = Lane("pair-header")
        self._pages_lane = Lane("pair-bitmap")

    @property
    def closed(self) -> bool:
        return self.fd < 0

    async def commit_header(self, meta: dict[str, Any]) -> None:
        """:meth:`write_header` on the header lane."""
        await self._header_lane.run(self.write_header, meta)

    async def commit_pages(self, pages: list[tuple[int, int, bytes]]) -> None:
        """:meth:`write_pages` on the bitmap lane."""
        await self._pages_lane.run(self.write_pages, pages)

    async def discard(self) -> None:
        """:meth:`remove` (unlink, directory sync) on the header lane, then the lanes go."""
        await self._header_lane.run(self.remove)
        self._stop_lanes()

    def _stop_lanes(self) -> None:
        self._header_lane.shutdown()
        self._pages_lane.shutdown()

    @classmethod
    def create(cls, path: Path, meta: dict[str, Any], npages: int) -> PairFile:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".new")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, HEADER_BYTES + REGIONS * npages * PAGE_BYTES)
        pf = cls(path, fd, npages, 0)
        pf.write_header(meta)
        os.rename(tmp, path)
        sync_directory(path.parent)
        return pf

    @classmethod
    def open(cls, path: Path) -> tuple[PairFile, dict[str, Any], list[ChunkBitmap]]:
        """Open an existing pair file: its header and its three bitmaps."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            best: tuple[int, dict[str, Any]] | None = None
            for slot in range(2):
                raw = os.pread(fd, SLOT_BYTES, slot * SLOT_BYTES)
                found = decode_slot(MAGIC, raw)
                if found is not None and (best is None or found[0] > best[0]):
                    best = found
            if best is None:
                raise PairFileError(f"{path}: no valid header")
            seq, meta = best
            nbits = int(meta["chunks"])
            pf = cls(path, fd, int(meta["npages"]), seq)
            bitmaps = [ChunkBitmap(nbits) for _ in range(REGIONS)]
            for region, bitmap in enumerate(bitmaps):
                for p in pf._mapped_pages(region):
                    bitmap.load_page(p, os.pread(fd, PAGE_BYTES, pf.page_offset(region, p)))
            return pf, meta, bitmaps
        except BaseException:
            os.close(fd)
            raise

    def page_offset(self, region: int, page: int) -> int:
        return HEADER_BYTES + (region * self.npages + page) * PAGE_BYTES

    def _mapped_pages(self, region: int) -> list[int]:
        """Pages of ``region`` that hold data (holes are all-zero pages)."""
        start = self.page_offset(region, 0)
        end = self.page_offset(region, self.npages)
        pages: list[int] = []
        pos = start
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:
                break
            if data >= end:
                break
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
            first = (data - start) // PAGE_BYTES
            last = (hole - start + PAGE_BYTES - 1) // PAGE_BYTES
            pages.extend(range(first, min(last, self.npages)))
            pos = hole
        return pages

    def write_header(self, meta: dict[str, Any]) -> None:
        """Write the next header slot and make it durable."""
        self.seq += 1
        slot = encode_slot(MAGIC, self.seq, meta, SLOT_BYTES, "pair header")
        os.pwrite(self.fd, slot, (self.seq % 2) * SLOT_BYTES)
        os.fdatasync(self.fd)

    def write_pages(self, pages: list[tuple[int, int, bytes]]) -> None:
        """Write ``(region, page, bytes)`` and make them durable."""
        for region, page, data in pages:
            os.pwrite(self.fd, data, self.page_offset(region, page))
        os.fdatasync(self.fd)

    def close(self) -> None:
        self._stop_lanes()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        sync_directory(self.path.parent)


HOLD_REGION = 0  # the copy set: the one region whose bits the copy workers clear


class WriteIntentLog:
    """Group commit of bitmap pages: every caller of :meth:`commit` shares one sync.

    ``before_write`` runs after the pages are snapshotted and before they are written:
    the pair syncs the target there when the snapshot contains cleared bits.

    Lazy clearing, as Linux md does it: while :attr:`hold` is on (the pair is mirroring,
    where a stale dirty bit only costs a recopy), a copy-set bit that a copy clears in
    memory stays set *on disk*: every snapshot of its page ORs it back in. Setting it again
    then needs no sync, since the disk still says dirty. :meth:`age` (called every
    ``clear_delay`` seconds) lets bits held for a full period reach the disk as cleared,
    so a bit stays set on disk between one and two periods after its chunk was copied.
    Invariant: a held bit is set in the last written and in any in-flight snapshot.
    """

    def __init__(
        self,
        pair_file: PairRecord,
        bitmaps: list[ChunkBitmap],
        before_write: Callable[[], Awaitable[None]],
    ) -> None:
        self.file = pair_file
        self.bitmaps = bitmaps
        self.before_write = before_write
        # Bits set in memory and not yet on disk, per region (the fast path's question).
        self._unsynced: list[set[int]] = [set() for _ in bitmaps]
        self._committing: list[set[int]] = [set() for _ in bitmaps]
        self._next: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self.commits = 0
        self.closed = False
        self.hold = False
        nbits = bitmaps[HOLD_REGION].nbits
        # Copy-set bits clear in memory and still set on disk: cleared this period, and
        # in the period before (released at the next :meth:`age`).
        self._held_new = ChunkBitmap(nbits)
        self._held_old = ChunkBitmap(nbits)
        self.resets_without_sync = 0

    def mark(self, region: int, bit: int) -> bool:
        """Set ``bit``; True if the caller must await :meth:`commit` before its write."""
        if self.bitmaps[region].set(bit):
            if region == HOLD_REGION and (self._held_new.clear(bit) | self._held_old.clear(bit)):
                self.resets_without_sync += 1
                return False  # the disk still says dirty; the page is written with it set
            self._unsynced[region].add(bit)
            return True
        return bit in self._unsynced[region] or bit in self._committing[region]

    def clear(self, region: int, bit: int) -> bool:
        """Clear ``bit`` in memory (a copy reached the target); True if it was set. While
        holding, a copy-set bit that is durably set stays set on disk for a while."""
        if not self.bitmaps[region].clear(bit):
            return False
        durable = bit not in self._unsynced[region] and bit not in self._committing[region]
        if region == HOLD_REGION and self.hold and durable:
            self._held_new.set(bit)
        return True

    def set_hold(self, hold: bool) -> None:
        """Hold cleared copy-set bits on disk (mirroring) or not; turning it off releases
        every held bit: the next commit writes them cleared."""
        self.hold = hold
        if not hold:
            self.age()
            self.age()

    def age(self) -> None:
        """One ``clear_delay`` period passed: bits held since before the last call go to
        disk as cleared with the next commit."""
        released, self._held_old = self._held_old, self._held_new
        self._held_new = ChunkBitmap(released.nbits)
        self.bitmaps[HOLD_REGION].changed.update(released.page_numbers())

    @property
    def held(self) -> int:
        return self._held_new.count + self._held_old.count

    def _snapshot(self, region: int, p: int, data: bytes) -> bytes:
        """A page as it goes to disk: held bits stay set."""
        if region != HOLD_REGION:
            return data
        value = int.from_bytes(data, "little")
        for held in (self._held_new, self._held_old):
            if held.has_page(p):
                value |= int.from_bytes(held.page_bytes(p), "little")
        return value.to_bytes(len(data), "little")

    def pending(self) -> bool:
        return any(b.changed for b in self.bitmaps)

    async def commit(self) -> None:
        """Return once every bit set before the call is durable."""
        if self.closed:
            raise RuntimeError("write-intent log closed")
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        future = self._next
        if self._runner is None or self._runner.done():
            self._runner = asyncio.ensure_future(self._run())
        await asyncio.shield(future)

    async def drain(self) -> None:
        """Return once no commit is running or queued (whatever its outcome: a failed
        one was reported to its waiters)."""
        while self._runner is not None and not self._runner.done():
            await asyncio.gather(self._runner, return_exceptions=True)

    async def _run(self) -> None:
        while self._next is not None:
            future, self._next = self._next, None
            try:
                pages = [
                    (region, p, self._snapshot(region, p, data))
                    for region, bitmap in enumerate(self.bitmaps)
                    for p, data in bitmap.take_changed_pages().items()
                ]
                self._committing = self._unsynced
                self._unsynced = [set() for _ in self.bitmaps]
                await self.before_write()
                await self.file.commit_pages(pages)
                self.commits += 1
                self._committing = [set() for _ in self.bitmaps]
            except Exception as exc:  # every waiter learns of it; the pair suspends
                for region, bits in enumerate(self._committing):
                    self._unsynced[region] |= bits
                for region, p, _ in pages:
                    self.bitmaps[region].changed.add(p)
                future.set_exception(exc)
                future.exception()  # no "never retrieved" warning if nobody waits
                continue
            future.set_result(None)
