"""A pair's record in the cluster: the pair file's header and bitmaps in one RADOS object.

With two gateways on the same RBD images (docs/rbd.md), a pair whose volumes are RBD
images keeps what :mod:`backing.pairs.journal` keeps in a local pair file in an object
beside its target image instead (``targetd.pair.<target image>``), so whichever gateway
holds the source's lock can run it and resume it where the other stopped. Same layout as
the file, minus the second header slot (a RADOS write operation is atomic)::

    0     header (4 KiB): magic, length u32, crc32 u32, JSON
    4096  region 0: the copy set ...  regions 1, 2: source / target changed since the split

and two xattrs: ``targetd.owner`` (the token of the gateway that runs the pair) and
``targetd.version`` (bumped by every header write, which a gateway that only shows the
pair polls). Every write is one operation guarded by ``cmpxattr(owner == my token)``: once
another gateway :meth:`claim`\\ ed the pair, a write from the old one (fenced, or frozen and
woken up) is refused with :class:`RecordTaken` and changes nothing. The durability rule
is the file's: :class:`backing.pairs.journal.WriteIntentLog` awaits :meth:`commit_pages`
(the OSDs have the pages) before the host write it covers runs.

The object is anything with the blocking calls of backing's ``RadosObject`` (``xattr``,
``size``, ``read_at``, ``write_guarded``, ``remove_guarded``, ``close``); they run on the
record's own threads, never on the event loop.
"""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from backing.pairs.bitmap import PAGE_BYTES, ChunkBitmap
from backing.pairs.journal import REGIONS
from backing.pairs.record_io import Lane

MAGIC = b"TDPAIRC1"
HEADER_BYTES = 4096
_HEAD = struct.Struct(">8sII")
OWNER = b"targetd.owner"
VERSION = b"targetd.version"
_READ_PIECE = 4 << 20


class RecordTaken(OSError):
    """Another gateway runs the pair now: this one may no longer write its record."""


class RecordObject(Protocol):
    name: str

    def xattr(self, name: bytes) -> bytes | None: ...
    def size(self) -> int | None: ...
    def read_at(self, offset: int, length: int) -> bytes: ...
    def write_guarded(
        self,
        guard: tuple[bytes, bytes] | None,
        writes: list[tuple[int, bytes]],
        xattrs: dict[bytes, bytes] | None = None,
        *,
        create: bool = False,
    ) -> bool: ...
    def remove_guarded(self, guard: tuple[bytes, bytes]) -> bool: ...
    def close(self, wait: float | None = None) -> None: ...


def _encode_header(meta: dict[str, Any]) -> bytes:
    body = json.dumps(meta, sort_keys=True).encode()
    if len(body) > HEADER_BYTES - _HEAD.size:
        raise ValueError("pair header too large")
    return (_HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body).ljust(HEADER_BYTES, b"\0")


def _decode_header(raw: bytes, name: str) -> dict[str, Any]:
    if len(raw) < _HEAD.size:
        raise ValueError(f"{name}: no pair header")
    magic, length, crc = _HEAD.unpack_from(raw)
    body = raw[_HEAD.size : _HEAD.size + length]
    if magic != MAGIC or len(body) != length or zlib.crc32(body) != crc:
        raise ValueError(f"{name}: not a pair record")
    meta: dict[str, Any] = json.loads(body)
    return meta


class ClusterPairFile:
    """A pair record in ``obj``, written as the gateway holding ``token``."""

    def __init__(self, obj: RecordObject, npages: int, token: bytes, version: int) -> None:
        self.obj = obj
        self.path = obj.name  # how logs name it
        self.npages = npages
        self.token = token
        self.version = version
        self.closed = False
        # Set once a write was refused: the other gateway claimed the record. The pair
        # that wrote it must stop here (``on_taken`` is told, on the event loop).
        self.taken = False
        self.on_taken: Callable[[], None] | None = None
        self._header_lane = Lane("pair-header")
        self._pages_lane = Lane("pair-bitmap")

    # -- blocking: creation and loading (a worker thread) ---------------------------------
    @classmethod
    def create(cls, obj: RecordObject, meta: dict[str, Any], npages: int) -> ClusterPairFile:
        """A new record, owned by the caller; FileExistsError if the object exists."""
        token = uuid.uuid4().hex.encode()
        xattrs = {OWNER: token, VERSION: b"1"}
        if not obj.write_guarded(None, [(0, _encode_header(meta))], xattrs, create=True):
            raise FileExistsError(f"{obj.name}: a pair record exists")
        return cls(obj, npages, token, 1)

    @classmethod
    def load(
        cls, obj: RecordObject, *, claim: bool
    ) -> tuple[ClusterPairFile, dict[str, Any], list[ChunkBitmap]] | None:
        """The record, its header and its three bitmaps; None if there is none. With
        ``claim``, this gateway takes the record over first (later writes of the gateway
        that ran it are refused), so what it reads is final."""
        owner = obj.xattr(OWNER)
        if owner is None:
            return None
        token = owner
        if claim:
            token = uuid.uuid4().hex.encode()
            while not obj.write_guarded((OWNER, owner), [], {OWNER: token}):
                owner = obj.xattr(OWNER)
                if owner is None:
                    return None
        version = int(obj.xattr(VERSION) or b"0")
        meta = _decode_header(obj.read_at(0, HEADER_BYTES), obj.name)
        npages = int(meta["npages"])
        bitmaps = [ChunkBitmap(int(meta["chunks"])) for _ in range(REGIONS)]
        end = HEADER_BYTES + REGIONS * npages * PAGE_BYTES
        size = min(obj.size() or 0, end)
        at = HEADER_BYTES
        while at < size:
            piece = obj.read_at(at, min(_READ_PIECE, size - at))
            if not piece:
                break
            for i in range(0, len(piece) - PAGE_BYTES + 1, PAGE_BYTES):
                page = piece[i : i + PAGE_BYTES]
                if any(page):
                    index = (at + i - HEADER_BYTES) // PAGE_BYTES
                    region, p = divmod(index, npages)
                    bitmaps[region].load_page(p, page)
            at += len(piece)
        record = cls(obj, npages, token if claim else b"", version)
        return record, meta, bitmaps

    def write_header(self, meta: dict[str, Any]) -> None:
        version = self.version + 1
        ok = self.obj.write_guarded(
            (OWNER, self.token), [(0, _encode_header(meta))], {VERSION: str(version).encode()}
        )
        if not ok:
            self.taken = True
            raise RecordTaken(f"{self.obj.name}: another gateway runs this pair now")
        self.version = version

    def write_pages(self, pages: list[tuple[int, int, bytes]]) -> None:
        writes = [
            (HEADER_BYTES + (region * self.npages + p) * PAGE_BYTES, data)
            for region, p, data in pages
        ]
        if not self.obj.write_guarded((OWNER, self.token), writes):
            self.taken = True
            raise RecordTaken(f"{self.obj.name}: another gateway runs this pair now")

    def remove(self) -> None:
        if not self.obj.remove_guarded((OWNER, self.token)):
            self.taken = True
            raise RecordTaken(f"{self.obj.name}: another gateway runs this pair now")
        self.closed = True

    def close(self) -> None:
        """Stop writing (the object, and its client, belong to the caller)."""
        self._stop_lanes()
        self.closed = True

    # -- the pair engine's calls (journal.PairFile's) -------------------------------------
    async def commit_header(self, meta: dict[str, Any]) -> None:
        await self._told(self._header_lane.run(self.write_header, meta))

    async def commit_pages(self, pages: list[tuple[int, int, bytes]]) -> None:
        await self._told(self._pages_lane.run(self.write_pages, pages))

    async def _told(self, call: Awaitable[None]) -> None:
        try:
            await call
        except RecordTaken:
            if self.on_taken is not None:
                self.on_taken()
            raise

    async def discard(self) -> None:
        await self._header_lane.run(self.remove)
        self._stop_lanes()

    def _stop_lanes(self) -> None:
        self._header_lane.shutdown()
        self._pages_lane.shutdown()
