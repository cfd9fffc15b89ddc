"""A virtual tape kept in an S3 bucket: records stream to the bucket as multipart uploads,
come back with ranged GETs, and a tape torn by a crash mid-write is mended on opening.

This module knows nothing of SCSI. It offers what :class:`backing.tape_image.TapeImage`
offers (the object index, reads, appends at end of data, ``flush``), so a drive holds
either.

Layout, under ``PREFIX BARCODE/`` in the bucket (its names, formats and calls:
backing.tape_s3_objects)::

    tape.json             capacity and early-warning size (written once, at creation)
    seg-00000001          a segment: entries one after another, in the image's entry
                          format (16-byte header with the payload's CRC32C, then payload)
    seg-00000001.idx      its index: the entry lengths (-1 for a file mark); the commit
                          point: a segment is on the tape when its index is
    seg-00000002 ...

S3 objects are written whole and never change, so a tape is a run of segments. A segment
is open from the first record written after a *sync point* to the next sync point (a
file mark, REWIND, LOCATE, a read of what was just written, unload, shutdown): meanwhile
its bytes go up as the parts of a multipart upload, each part as soon as the records
fill it; at the sync point the last part goes up, the upload is completed and the
index is written. Part sizes grow with the segment (:func:`part_target`), so 10,000
parts hold far more than any tape.

What a WRITE's GOOD means (buffered mode, as the drive's mode header says): the record is
in the *spool* (backing.tape_s3_spool), local files per tape that hold the bytes of the
open segment not yet uploaded, and its length is in the local *journal* of the open
segment's entries. Both are written (to the page cache, with no sync) before the command
ends, so a daemon killed with SIGKILL loses no acknowledged record: on the next opening
the journal says what the
open segment held, the parts already in the bucket give its first bytes, the spool the
rest, and the upload is completed with them. A power cut can lose the spool (it is not
synced, as a local image is not synced before its sync point): whatever the journal
lists and neither the bucket nor the spool still holds is reported (``Recovery.lost``)
and logged, never silently dropped. Everything before a sync point is in the bucket.

Any other multipart upload under the tape's prefix is one no journal claims (a crash of
another host, a lost state directory): it is aborted on opening and reported.

Calls block on the network: the drive runs them on its I/O thread (scsi.stream_device).
"""

from __future__ import annotations

import bisect
import logging
import os
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backing.s3_client import S3Location
from backing.tape_image import ENTRY_SIZE, CorruptRecord, Kind, MediumFull
from backing.tape_index import RecordIndex
from backing.tape_s3_objects import (
    FILEMARK_ENTRY,
    FIRST_PART,
    INDEX_SUFFIX,
    TapeObjects,
    entry_header,
    entry_ok,
    part_target,
)
from backing.tape_s3_spool import Spool

log = logging.getLogger(__name__)

READ_AHEAD = 8 << 20


@dataclass(slots=True)
class Recovery:
    """What opening found: entries on the tape, bytes of a torn tail dropped, records the
    journal listed that could not be recovered (lost), uploads aborted, and notes."""

    entries: int = 0
    cut_bytes: int = 0
    lost: int = 0
    recovered: int = 0  # entries of the open segment mended from the bucket and spool
    aborted_uploads: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Segment:
    number: int
    first: int  # object number of its first entry
    start: int  # tape byte offset of its first entry
    size: int  # bytes of its entries (the data object may hold more past them)


class S3Tape(RecordIndex):
    """An open tape in a bucket (see the module's text). Same interface as TapeImage."""

    def __init__(
        self,
        client: Any,
        location: S3Location,
        barcode: str,
        spool_dir: Path,
        *,
        read_only: bool = False,
        first_part: int = FIRST_PART,
        read_ahead: int = READ_AHEAD,
    ) -> None:
        self._objects = TapeObjects(client, location, barcode)
        self.client = client
        self.bucket = location.bucket
        self.barcode = barcode
        self.key = self._objects.key
        self.path = self._objects.path
        self.read_only = read_only
        self.first_part = first_part
        self._spool = Spool(spool_dir, barcode)
        meta = self._objects.get_meta()
        self.capacity = int(meta["capacity"])
        self.early_warning = int(meta["early_warning"])
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []  # the segments' first object numbers, for bisect
        self._lengths = array("q")
        self._offsets = array("Q")  # tape byte offset of each entry
        self._filemarks = array("Q")
        self._end = 0
        self._next_segment = 1
        # The open segment: its number, object/byte start, upload and spool.
        self._open: _Segment | None = None
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._landed = 0  # segment bytes in uploaded parts
        self._sent = 0  # ... and in the part in flight
        self._buffer = bytearray()  # segment bytes from _sent on (the current spool's)
        self._inflight: Future[dict[str, Any]] | None = None
        self._inflight_body: bytes | bytearray = b""  # what it sends, again if it fails
        # How far a sync point that failed part way got: "" (not begun), "last part" (no
        # record may join the segment), "completed" (only the index is left).
        self._sealed = ""
        self._uploader: ThreadPoolExecutor | None = None
        self._cache: tuple[int, int, bytes] | None = None  # segment, offset, bytes
        # The window after the cached one, being read: segment, offset, length, its GET.
        self._ahead: tuple[int, int, int, Future[bytes]] | None = None
        self._reader: ThreadPoolExecutor | None = None
        self.read_ahead = read_ahead
        self.recovery = self._load()

    # -- opening ----------------------------------------------------------------------
    def _load(self) -> Recovery:
        recovery = Recovery()
        objects = self._objects.listing(self.key + "seg-")
        journal = self._spool.read_journal()
        if journal is not None:
            number, lengths = journal
            if self._objects.index_key(number) not in objects:
                self._mend(number, lengths, objects, recovery)
                objects = self._objects.listing(self.key + "seg-")
            self._spool.drop()
        for key, upload_id in self._objects.uploads():
            # Only the mend above completes an upload; any left is no journal's.
            self._objects.abort(key, upload_id)
            recovery.aborted_uploads += 1
            recovery.notes.append(f"aborted an abandoned upload of {key}")
        indexed = sorted(
            int(k[len(self.key) + 4 : -len(INDEX_SUFFIX)])
            for k in objects
            if k.endswith(INDEX_SUFFIX)
        )
        for number in indexed:
            self._add_segment(number, self._objects.read_index(number))
        numbers = [int(k[len(self.key) + 4 :].split(".")[0]) for k in objects]
        self._next_segment = max(numbers, default=0) + 1
        for key in objects:
            number = int(key[len(self.key) + 4 :].split(".")[0])
            if not key.endswith(INDEX_SUFFIX) and number not in indexed:
                recovery.notes.append(f"{key} has no index: not on the tape")
        recovery.entries = len(self._lengths)
        for note in recovery.notes:
            log.warning("tape %s: %s", self.barcode, note)
        if recovery.lost:
            log.error(
                "tape %s: %d acknowledged record(s) or file mark(s) could not be recovered",
                self.barcode,
                recovery.lost,
            )
        return recovery

    def _add_segment(self, number: int, lengths: array) -> None:
        segment = _Segment(number, len(self._lengths), self._end, 0)
        start = self._end
        self._index_entries(lengths)
        segment.size = self._end - start
        self._segments.append(segment)
        self._firsts.append(segment.first)

    def _mend(
        self, number: int, lengths: array, objects: dict[str, int], recovery: Recovery
    ) -> None:
        """The open segment a crash left: its bytes from the uploaded parts and the spool,
        cut after the last whole entry, completed and indexed."""
        key = self._objects.segment_key(number)
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        landed = 0
        if key in objects:  # completed before the crash, the index not yet written
            landed = objects[key]
            spool = b""
        else:
            for upload_key, uid in self._objects.uploads():
                if upload_key == key and upload_id is None:
                    upload_id = uid
                    parts = self._objects.list_parts(key, uid)
                    landed = sum(p["Size"] for p in parts)
            spool = self._spool.spooled(number, landed)
        # Segment bytes held: [0, landed) in the bucket, then [landed, held) spooled.
        held = landed + len(spool)
        kept = array("q")
        end = 0
        for n in lengths:
            size = ENTRY_SIZE + max(n, 0)
            if end + size > held:
                break
            if end >= landed:  # wholly in the spool: checked (a power cut may tear it)
                head = spool[end - landed : end - landed + ENTRY_SIZE]
                payload = spool[end - landed + ENTRY_SIZE : end - landed + size]
                if not entry_ok(head, payload, n):
                    recovery.notes.append(f"{key}: entry {len(kept)} torn in the spool")
                    break
            kept.append(n)
            end += size
        recovery.lost += len(lengths) - len(kept)
        recovery.cut_bytes += held - end
        recovery.recovered += len(kept)
        if not kept:
            if upload_id is not None:
                self._objects.abort(key, upload_id)
            return
        if key not in objects:
            tail = spool[: end - landed] if end > landed else b""
            if upload_id is None:
                self._objects.put(key, tail)
            else:
                if tail:
                    parts.append(self._objects.upload_part(key, upload_id, len(parts) + 1, tail))
                self._objects.complete(key, upload_id, parts)
        self._objects.put_index(number, kept)
        recovery.notes.append(
            f"{key}: mended after a crash, {len(kept)} of {len(lengths)} entries kept"
        )

    # -- what is on the tape ----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._lengths)

    @property
    def used(self) -> int:
        return self._end

    @property
    def free(self) -> int:
        return self.capacity - self._end

    def used_at(self, position: int) -> int:
        return self._offsets[position] if position < len(self) else self._end

    @property
    def buffered(self) -> tuple[int, int]:
        """(entries, bytes) written since the last sync point: in the spool or uploaded
        parts of an upload not yet completed."""
        if self._open is None:
            return 0, 0
        return len(self) - self._open.first, self._end - self._open.start

    def read(self, index: int) -> bytes:
        """The payload of record ``index``, checked against its checksum. A record of the
        open segment makes a sync point first (its bytes are not readable until then)."""
        length = self._lengths[index]
        if length < 0:
            raise ValueError(f"object {index} is a file mark")
        if self._open is not None and index >= self._open.first:
            self.flush()
        segment = self._segments[bisect.bisect_right(self._firsts, index) - 1]
        at = self._offsets[index] - segment.start
        want = ENTRY_SIZE + length
        raw = self._cached(segment.number, at, want)
        if raw is None:
            start, data = self._window(segment, at, want)
            self._cache = (segment.number, start, data)
            raw = data[at - start : at - start + want]
            self._read_on(segment, start + len(data))
        if len(raw) != want:
            raise CorruptRecord(f"record {index} is short")
        if not entry_ok(raw[:ENTRY_SIZE], raw[ENTRY_SIZE:], length):
            raise CorruptRecord(f"record {index} fails its checksum")
        return raw[ENTRY_SIZE:]

    def _window(self, segment: _Segment, at: int, want: int) -> tuple[int, bytes]:
        """(start, bytes) of a stretch of ``segment`` holding ``[at, at + want)``: the
        window read ahead when it holds it, else a GET of the record and what follows."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            number, start, length, future = ahead
            if number == segment.number and start <= at and at + want <= start + length:
                try:
                    data = future.result()
                except OSError:  # read again below, where its failure is the command's
                    data = b""
                if len(data) == length:
                    return start, data
        span = min(max(want, self.read_ahead), segment.size - at)
        return at, self._objects.get_range(segment.number, at, span)

    def _read_on(self, segment: _Segment, end: int) -> None:
        """The window after ``end`` of ``segment`` (or the next segment's first), read in
        the background while the host takes the records before it."""
        if end >= segment.size:
            n = bisect.bisect_right(self._firsts, segment.first)
            if n >= len(self._segments):
                return
            segment, end = self._segments[n], 0
        length = min(self.read_ahead, segment.size - end)
        if length <= 0:
            return
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"s3r-{self.barcode}")
        future = self._reader.submit(self._objects.get_range, segment.number, end, length)
        self._ahead = (segment.number, end, length, future)

    def _cached(self, number: int, at: int, want: int) -> bytes | None:
        if self._cache is None:
            return None
        seg, start, data = self._cache
        if seg != number or at < start or at + want > start + len(data):
            return None
        return data[at - start : at - start + want]

    def records(self, start: int, stop: int) -> Iterator[bytes]:
        for i in range(start, stop):
            if not self.is_filemark(i):
                yield self.read(i)

    # -- writing ----------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"{self.path} is open read-only")

    def fits(self, payload_length: int) -> bool:
        return ENTRY_SIZE + payload_length <= self.free

    def truncate(self, position: int) -> None:
        """Make ``position`` the end of data. The segments after it go (last first, so a
        crash leaves a shorter tape's worth of them, never a gap), then the segment
        holding it gets a shorter index (its data object keeps bytes no index names)."""
        if position >= len(self):
            return
        self._check_writable()
        self.flush()
        self._cache = self._ahead = None
        s = bisect.bisect_right(self._firsts, position) - 1
        for segment in reversed(self._segments[s + 1 :]):
            self._objects.delete_segment(segment.number)
        segment = self._segments[s]
        if position == segment.first:
            self._objects.delete_segment(segment.number)
            del self._segments[s:]
            del self._firsts[s:]
        else:
            self._objects.put_index(segment.number, self._lengths[segment.first : position])
            del self._segments[s + 1 :]
            del self._firsts[s + 1 :]
            segment.size = self._offsets[position] - segment.start
        self._end = self._offsets[position]
        del self._lengths[position:]
        del self._offsets[position:]
        del self._filemarks[bisect.bisect_left(self._filemarks, position) :]

    def append_record(self, payload: bytes | bytearray | memoryview) -> None:
        self._check_writable()
        if not self.fits(len(payload)):
            raise MediumFull(f"{len(payload)}-byte record does not fit in {self.free} bytes")
        self._append([entry_header(Kind.RECORD, payload), payload], array("q", [len(payload)]))

    def append_record_from(
        self,
        fd: int,
        offset: int,
        length: int,
        *,
        step: int = 0,
        between: Callable[[], None] | None = None,
        observe: Callable[[bytes], None] | None = None,
    ) -> None:
        """A record whose payload is read from ``fd`` at ``offset`` (a copy manager's
        source), in slices of ``step`` with ``between()`` after each; ``observe`` gets the
        payload once it is appended (a copy manager hashing its backup)."""
        self._check_writable()
        if not self.fits(length):
            raise MediumFull(f"{length}-byte record does not fit in {self.free} bytes")
        payload = bytearray()
        step = step or length
        while len(payload) < length:
            chunk = os.pread(fd, min(step, length - len(payload)), offset + len(payload))
            if not chunk:
                raise OSError(f"source ended {length - len(payload)} bytes short of the record")
            payload += chunk
            if between is not None and len(payload) < length:
                between()
        self.append_record(payload)
        if observe is not None:
            observe(bytes(payload))

    def append_filemarks(self, count: int) -> int:
        self._check_writable()
        room = min(count, max(0, self.free // ENTRY_SIZE))
        if room:
            self._append([FILEMARK_ENTRY * room], array("q", [-1]) * room)
        return room

    def _index_entries(self, lengths: array) -> None:
        """Entries of these lengths (a file mark: negative) at end of data, in the index."""
        first = len(self._lengths)
        offset = self._end
        for i, n in enumerate(lengths):
            self._offsets.append(offset)
            if n < 0:
                self._filemarks.append(first + i)
            offset += ENTRY_SIZE + max(n, 0)
        self._lengths.extend(lengths)
        self._end = offset

    def _append(self, parts: list[bytes | bytearray | memoryview], lengths: array) -> None:
        """Entries at end of data: into the spool, then their lengths into the journal
        (an entry the journal lists is whole in the spool), then up when a part is full."""
        if self._sealed:  # a sync point that failed after the last part: finish it first
            self.flush()
        if self._open is None:
            self._begin_segment()
        assert self._open is not None
        for part in parts:  # no joined copy of a multi-MiB record
            self._spool.write(part, len(self._buffer))
            self._buffer += part
        self._spool.journal(lengths)
        self._index_entries(lengths)
        self._open.size = self._end - self._open.start
        number = len(self._parts) + 1 + (self._inflight is not None)
        if len(self._buffer) >= part_target(number, self.first_part):
            self._upload_buffer()

    def _begin_segment(self) -> None:
        number = self._next_segment
        self._next_segment += 1
        self._open = _Segment(number, len(self), self._end, 0)
        self._upload_id, self._parts, self._landed, self._sent = None, [], 0, 0
        self._buffer = bytearray()
        self._spool.begin(number)

    def _upload_buffer(self) -> None:
        """The current spool's bytes go up as the next part, on the uploader thread, while
        records go on into the other spool (emptied once its own part is in the bucket).
        One part in flight at most: parts land in order, and a WRITE waits only when the
        bucket is slower than the records for a whole part."""
        assert self._open is not None
        self._settle()
        key = self._objects.segment_key(self._open.number)
        if self._upload_id is None:
            self._upload_id = self._objects.create_upload(key)
        if self._uploader is None:
            self._uploader = ThreadPoolExecutor(1, thread_name_prefix=f"s3-{self.barcode}")
        body, self._buffer = self._buffer, bytearray()  # handed over, not copied
        self._inflight = self._uploader.submit(
            self._objects.upload_part, key, self._upload_id, len(self._parts) + 1, body
        )
        self._inflight_body = body
        self._sent += len(body)
        self._spool.switch(self._open.number, self._sent)  # the other's part is in (settled)

    def _settle(self) -> None:
        """Wait for the part in flight. One that failed is sent again here; failing again
        is this call's failure (WRITE ERROR), and the part stays pending for the next
        call, so the segment's parts never skip or reorder while the bucket is away."""
        inflight = self._inflight
        if inflight is None:
            return
        if inflight.exception() is None:
            part = inflight.result()
        else:
            assert self._open is not None and self._upload_id is not None
            key = self._objects.segment_key(self._open.number)
            number = len(self._parts) + 1
            part = self._objects.upload_part(key, self._upload_id, number, self._inflight_body)
        self._inflight, self._inflight_body = None, b""
        self._parts.append(part)
        self._landed += part["Size"]

    def flush(self) -> None:
        """A sync point: the open segment completed and indexed in the bucket. One that
        fails part way is tried again by the next call (or before the next record): what
        it already did (the last part up, the upload completed) is not done twice, and no
        record joins the segment after its last part (it may be below S3's smallest)."""
        segment = self._open
        if segment is None or self.read_only:
            return
        self._settle()
        key = self._objects.segment_key(segment.number)
        if self._sealed == "completed":
            pass
        elif self._upload_id is None:
            self._sealed = "last part"  # nothing may join the object once it is written
            self._objects.put(key, self._buffer)
            self._sealed = "completed"
        else:
            if self._buffer:  # the last part, accounted for at once
                part = self._objects.upload_part(
                    key, self._upload_id, len(self._parts) + 1, self._buffer
                )
                self._parts.append(part)
                self._landed = self._sent = self._sent + part["Size"]
                self._buffer = bytearray()
                self._spool.switch(segment.number, self._sent)
            self._sealed = "last part"
            self._objects.complete(key, self._upload_id, self._parts)
            self._sealed = "completed"
        self._objects.put_index(segment.number, self._lengths[segment.first :])
        self._segments.append(segment)
        self._firsts.append(segment.first)
        self._open = None
        self._upload_id, self._parts, self._landed, self._sent = None, [], 0, 0
        self._buffer = bytearray()
        self._sealed = ""
        self._spool.drop()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._spool.close()
            for pool in (self._uploader, self._reader):
                if pool is not None:
                    pool.shutdown(wait=True)
            self._uploader = self._reader = None
            self._ahead = None

    def __enter__(self) -> S3Tape:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
