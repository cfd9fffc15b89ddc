"""The virtual tape image: an append-only file of records and file marks.

This module knows nothing of SCSI. A tape is a sequence of *objects* (records of data, and
file marks) numbered from 0; the position after the last object is end of data (EOD).

Layout::

    header   64 bytes: magic, version, capacity, early-warning size, the durable-up-to
             marker (an offset, its CRC32C, CRC32C of the fields before it), CRC32C
    entry    16-byte entry header (magic, kind, length, payload CRC32C, header CRC32C)
             followed by ``length`` payload bytes (records) or nothing (file marks)
    entry    ...

Why this shape: a tape is only ever written at its end (writing anywhere else cuts the
tape there first, as a real drive makes that point the new EOD), so an append-only file
with a checksum per entry is enough to survive a crash: a power cut can only damage what
was written since the last sync, and opening the image cuts the tape back to the first
entry there that is not whole. The header's *durable-up-to* marker says where that region
starts: it is written after each ``fdatasync`` of the data (with no sync of its own: a
stale marker only makes opening check more), lowered and synced before a cut below it, and
opening checks every record's payload from it on. An image without a marker (made before
it existed) is checked from its first record. An index of entry
offsets is kept in memory (built by one scan of the entry headers on open), so spacing
and locating are array lookups rather than file walks.

``capacity`` counts entry bytes (headers included) the medium holds; the last
``early_warning`` bytes of it are the early-warning zone where a drive reports
end-of-medium but still writes.
"""

from __future__ import annotations

import bisect
import os
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from crc32c import crc32c

from backing.tape_index import RecordIndex

MAGIC = b"TDTAPE\r\n"
VERSION = 1
HEADER = struct.Struct(">8sHHIQQ28sI")  # 64 bytes; the CRC covers the first 60
# The durable-up-to marker, in the header's reserved bytes: an offset, the CRC32C of its 8
# bytes, and the CRC32C of the header's fixed fields (its first 32 bytes). Moving the marker
# rewrites the header's last 32 bytes, header CRC included (one sector: an older targetd
# still reads the image); the fixed fields' CRC keeps the header valid should that write be
# torn anyway. All zeros (an image from before the marker) fails the marker's own CRC.
MARKER = struct.Struct(">QII")
_MARKER_AT = 32
_MARKER_END = _MARKER_AT + MARKER.size
ENTRY = struct.Struct(">HBBIII")  # 16 bytes; the header CRC covers the first 12
ENTRY_MAGIC = 0x5452  # "TR"
HEADER_SIZE = HEADER.size
ENTRY_SIZE = ENTRY.size
MIN_CAPACITY = 64 * 1024
_FILEMARK_BATCH = 65536  # file marks (1 MiB) written per pwrite by append_filemarks
# Bytes read at a time when opening: a page after a record (the next header is all that is
# needed), a MiB within a run of file marks.
_SCAN_HEAD = 4096
_SCAN_CHUNK = 1 << 20
# Early-warning zone when the creator does not choose one: 1/32 of the medium, at most
# 64 MiB, so even a small test tape has room for a few records past early warning.
MAX_DEFAULT_EARLY_WARNING = 64 << 20
# Bytes read back at a time to checksum a record copied in by the kernel.
_CRC_CHUNK = 1 << 20


class Kind(IntEnum):
    RECORD = 1
    FILEMARK = 2


class TapeImageError(Exception):
    """The file is not a tape image (bad magic, version or header checksum)."""


class MediumFull(Exception):
    """The entry does not fit before the end of the medium; nothing was written."""


class CorruptRecord(Exception):
    """A record's payload does not match its checksum (or is missing)."""


def default_early_warning(capacity: int) -> int:
    return min(capacity // 32, MAX_DEFAULT_EARLY_WARNING)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening found: entries kept, and torn-tail bytes cut off."""

    entries: int
    cut_bytes: int


def create(path: Path, capacity: int, *, early_warning: int | None = None) -> None:
    """Write a blank image (header only) at ``path``; refuses to overwrite an existing file."""
    if capacity < MIN_CAPACITY:
        raise ValueError(f"capacity must be at least {MIN_CAPACITY} bytes, not {capacity}")
    ew = default_early_warning(capacity) if early_warning is None else early_warning
    if not 0 <= ew < capacity:
        raise ValueError(f"early warning {ew} must be below the capacity {capacity}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, _encode_header(capacity, ew))
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_header(capacity: int, early_warning: int) -> bytes:
    body = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, 0, capacity, early_warning, bytes(28), 0)
    return body[:-4] + crc32c(body[:-4]).to_bytes(4, "big")


def _entry_header(kind: Kind, payload: bytes | memoryview) -> bytes:
    head = ENTRY.pack(ENTRY_MAGIC, kind, 0, len(payload), crc32c(payload), 0)
    return head[:12] + crc32c(head[:12]).to_bytes(4, "big")


# Every file mark's entry is these same 16 bytes, so a run of marks is one repeated
# pattern: written a MiB at a time, and recognised on opening without a loop per mark.
_FILEMARK = _entry_header(Kind.FILEMARK, b"")
_FILEMARKS = _FILEMARK * _FILEMARK_BATCH


def _filemark_run(buf: bytes, start: int) -> int:
    """How many whole file-mark entries ``buf`` holds from ``start`` on, one after another."""
    if buf[start : start + ENTRY_SIZE] != _FILEMARK:
        return 0
    most = min((len(buf) - start) // ENTRY_SIZE, _FILEMARK_BATCH)
    marks = memoryview(_FILEMARKS)
    lo, hi = 1, most  # the first lo entries are marks; more than hi are not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if buf.startswith(marks[: mid * ENTRY_SIZE], start):
            lo = mid
        else:
            hi = mid - 1
    return lo


class TapeImage(RecordIndex):
    """An open tape image: the object index, reads, and appends at end of data.

    Object ``i`` is a record when ``length(i) >= 0`` and a file mark when it is ``None``.
    All I/O is synchronous and positional and may wait on the disk: the caller runs it
    off the event loop and serialises commands (a tape drive runs one at a time).
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        flags = os.O_RDONLY if read_only else os.O_RDWR
        self._fd = os.open(self.path, flags | os.O_CLOEXEC)
        try:
            self.capacity, self.early_warning, self._durable = self._read_header()
            # Index: offset of each entry's header, payload length (-1 for a file mark),
            # and the object numbers of the file marks, sorted.
            self._offsets = array("Q")
            self._lengths = array("q")
            self._filemarks = array("Q")
            self._dirty = False  # written since the last flush
            self.recovery = self._scan()
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def open_or_create(cls, path: Path, capacity: int, *, read_only: bool = False) -> TapeImage:
        """Open ``path``, writing a blank image of ``capacity`` first if it does not exist.
        An existing image keeps the capacity it was made with."""
        if not Path(path).exists():
            create(path, capacity)
        return cls(path, read_only=read_only)

    # -- opening ------------------------------------------------------------------------
    def _read_header(self) -> tuple[int, int, int]:
        """Capacity, early-warning size, and the durable-up-to offset (the header's size
        when the image has no valid marker: everything is checked)."""
        raw = os.pread(self._fd, HEADER_SIZE, 0)
        if len(raw) < HEADER_SIZE:
            raise TapeImageError(f"{self.path}: too short for a tape image header")
        magic, version, size, _flags, capacity, ew, _, crc = HEADER.unpack(raw)
        if magic != MAGIC:
            raise TapeImageError(f"{self.path}: not a targetd tape image")
        fixed = raw[:_MARKER_AT]
        durable, marker_crc, fixed_crc = MARKER.unpack_from(raw, _MARKER_AT)
        if not (
            crc == crc32c(raw[:-4])  # written whole, marker and all
            or fixed_crc == crc32c(fixed)  # the fixed fields, when a marker write tore
            # the first marker images: the header CRC took the marker's 12 bytes as zeros
            or crc == crc32c(fixed + bytes(12) + raw[_MARKER_AT + 12 : -4])
        ):
            raise TapeImageError(f"{self.path}: header checksum mismatch")
        if version != VERSION or size != HEADER_SIZE:
            raise TapeImageError(f"{self.path}: unsupported image version {version}")
        self._fixed = fixed
        if marker_crc != crc32c(raw[_MARKER_AT : _MARKER_AT + 8]) or durable < HEADER_SIZE:
            durable = HEADER_SIZE
        return capacity, ew, durable

    def _scan(self) -> Recovery:
        """Index every whole entry; cut the tape back at the first torn or garbled one.

        Headers are checked everywhere; payload checksums of every record past the
        durable-up-to marker (a power cut may have torn any of them, not only the last)
        and of the last record. Records before the marker were synced: reads check them.
        """
        file_size = os.fstat(self._fd).st_size
        if self._durable > file_size:  # cut short by something else: trust nothing
            self._durable = HEADER_SIZE
        offset = HEADER_SIZE
        last_record: int | None = None
        checked: int | None = None  # the last record whose payload was checked
        buf, buf_at = b"", offset  # file bytes [buf_at, buf_at + len(buf)) read ahead
        ahead = _SCAN_HEAD
        while offset + ENTRY_SIZE <= file_size:
            rel = offset - buf_at
            if rel + ENTRY_SIZE > len(buf):
                buf, buf_at, rel = os.pread(self._fd, ahead, offset), offset, 0
            marks = _filemark_run(buf, rel)
            if marks:  # a run of file marks, indexed at once
                self._append_filemarks_index(offset, marks)
                offset += marks * ENTRY_SIZE
                ahead = _SCAN_CHUNK
                continue
            ahead = _SCAN_HEAD
            head = buf[rel : rel + ENTRY_SIZE]
            magic, kind, _flags, length, payload_crc, head_crc = ENTRY.unpack(head)
            if magic != ENTRY_MAGIC or head_crc != crc32c(head[:12]) or kind not in (1, 2):
                break
            if kind == Kind.FILEMARK and length:
                break
            if offset + ENTRY_SIZE + length > file_size:
                break
            if kind == Kind.RECORD and offset + ENTRY_SIZE + length > self._durable:
                if not self._payload_ok(offset + ENTRY_SIZE, length, payload_crc):
                    break
                checked = len(self._offsets)
            self._append_index(offset, Kind(kind), length)
            if kind == Kind.RECORD:
                last_record = len(self._offsets) - 1
            offset += ENTRY_SIZE + length
        last = len(self._offsets) - 1
        if last_record is not None and last_record == last and checked != last:
            try:
                self.read(last_record)
            except CorruptRecord:
                offset = self._offsets[last_record]
                self._drop_index(last_record)
        cut = file_size - offset
        self._end = offset
        if not self.read_only and (cut or self._durable != offset):
            if cut:
                os.ftruncate(self._fd, offset)
            if offset < self._durable:  # the cut went below the marker: lower it first
                self._set_durable(offset)
            # What was checked is made durable, so the next opening need not check it
            # again (a daemon killed without a power cut left it in the page cache).
            os.fsync(self._fd)
            self._set_durable(offset)
        return Recovery(len(self._offsets), cut)

    def _payload_ok(self, at: int, length: int, crc: int) -> bool:
        got = 0
        for start in range(0, length, _CRC_CHUNK):
            chunk = os.pread(self._fd, min(_CRC_CHUNK, length - start), at + start)
            if len(chunk) != min(_CRC_CHUNK, length - start):
                return False
            got = crc32c(chunk, got)
        return got == crc

    def _set_durable(self, offset: int) -> None:
        """Write the durable-up-to marker. Raising it needs no sync of its own: a marker
        lost to a power cut leaves an older, lower one, and opening checks more. Lowering
        it must reach the disk before anything is written past the new value (the caller
        syncs)."""
        if offset != self._durable:
            self._durable = offset
            marker = MARKER.pack(offset, crc32c(offset.to_bytes(8, "big")), crc32c(self._fixed))
            rest = marker + bytes(HEADER_SIZE - 4 - _MARKER_END)
            crc = crc32c(self._fixed + rest).to_bytes(4, "big")
            os.pwrite(self._fd, rest + crc, _MARKER_AT)

    def _append_index(self, offset: int, kind: Kind, length: int) -> None:
        if kind == Kind.FILEMARK:
            self._filemarks.append(len(self._offsets))
            length = -1
        self._offsets.append(offset)
        self._lengths.append(length)

    def _append_filemarks_index(self, offset: int, count: int) -> None:
        """``count`` file marks one after another from ``offset``: array extends in C, not
        a Python loop per mark (millions of marks in one WRITE FILEMARKS)."""
        first = len(self._offsets)
        self._offsets.extend(range(offset, offset + count * ENTRY_SIZE, ENTRY_SIZE))
        self._lengths.extend(array("q", [-1]) * count)
        self._filemarks.extend(range(first, first + count))

    def _drop_index(self, start: int) -> None:
        del self._offsets[start:]
        del self._lengths[start:]
        del self._filemarks[bisect.bisect_left(self._filemarks, start) :]

    # -- what is on the tape ------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of objects; also the object number of end of data."""
        return len(self._offsets)

    @property
    def used(self) -> int:
        """Bytes of the medium holding entries."""
        return self._end - HEADER_SIZE

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def used_at(self, position: int) -> int:
        """Bytes of the medium before object ``position``."""
        end = self._offsets[position] if position < len(self) else self._end
        return end - HEADER_SIZE

    def read(self, index: int) -> bytes:
        """The payload of record ``index``, checked against its checksum."""
        length = self._lengths[index]
        if length < 0:
            raise ValueError(f"object {index} is a file mark")
        offset = self._offsets[index]
        raw = os.pread(self._fd, ENTRY_SIZE + length, offset)
        if len(raw) != ENTRY_SIZE + length:
            raise CorruptRecord(f"record {index} is short")
        payload_crc = ENTRY.unpack_from(raw)[4]
        payload = raw[ENTRY_SIZE:]
        if crc32c(payload) != payload_crc:
            raise CorruptRecord(f"record {index} fails its checksum")
        return payload

    def records(self, start: int, stop: int) -> Iterator[bytes]:
        for i in range(start, stop):
            if not self.is_filemark(i):
                yield self.read(i)

    # -- writing ---------------------------------------------------------------------------
    def truncate(self, position: int) -> None:
        """Make ``position`` the end of data: every object from it on is gone."""
        if position >= len(self):
            return
        self._check_writable()
        end = self._offsets[position]
        self._drop_index(position)
        os.ftruncate(self._fd, end)
        self._end = end
        self._dirty = True
        if end < self._durable:
            # Records written from here on overwrite bytes the marker calls durable: it
            # comes down first, on disk, or a cut could leave them torn and unchecked.
            self._set_durable(end)
            os.fdatasync(self._fd)

    def fits(self, payload_length: int) -> bool:
        return ENTRY_SIZE + payload_length <= self.free

    def append_record(self, payload: bytes | memoryview) -> None:
        """Write one record at end of data; :class:`MediumFull` (nothing written) if the
        medium has no room for it."""
        self._check_writable()
        if not self.fits(len(payload)):
            raise MediumFull(f"{len(payload)}-byte record does not fit in {self.free} bytes")
        head = _entry_header(Kind.RECORD, payload)
        self._write(self._end, [head, payload])
        self._append_index(self._end, Kind.RECORD, len(payload))
        self._end += ENTRY_SIZE + len(payload)

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
        """Like :meth:`append_record`, with the payload copied by the kernel from ``fd`` at
        ``offset`` (copy_file_range: no trip through user space). The checksum is taken
        from the bytes as they landed in the image, and the entry header is written after
        them, so a crash mid-way leaves a tail that opening cuts off. With ``step``, the
        kernel copies at most that many bytes per call and ``between()`` runs after each
        (a copy that gives way to other I/O). ``observe`` is handed the payload as it is
        read back for the checksum (a copy manager hashing its backup, at no extra read)."""
        self._check_writable()
        if not self.fits(length):
            raise MediumFull(f"{length}-byte record does not fit in {self.free} bytes")
        at = self._end + ENTRY_SIZE
        done = 0
        try:
            while done < length:
                want = min(step, length - done) if step > 0 else length - done
                n = os.copy_file_range(fd, self._fd, want, offset + done, at + done)
                if n == 0:
                    raise OSError(f"source ended {length - done} bytes short of the record")
                done += n
                if between is not None and done < length:
                    between()
        except OSError:
            self._dirty = True
            os.ftruncate(self._fd, self._end)  # no half record past end of data
            raise
        crc = 0
        for start in range(0, length, _CRC_CHUNK):
            landed = os.pread(self._fd, min(_CRC_CHUNK, length - start), at + start)
            crc = crc32c(landed, crc)
            if observe is not None:
                observe(landed)
        head = ENTRY.pack(ENTRY_MAGIC, Kind.RECORD, 0, length, crc, 0)
        self._write(self._end, [head[:12] + crc32c(head[:12]).to_bytes(4, "big")])
        self._append_index(self._end, Kind.RECORD, length)
        self._end += ENTRY_SIZE + length

    def append_filemarks(self, count: int) -> int:
        """Write up to ``count`` file marks at end of data; returns how many fitted."""
        self._check_writable()
        room = min(count, max(0, self.free // ENTRY_SIZE))
        marks = memoryview(_FILEMARKS)
        # One buffer per batch: a vector of ``room`` parts would pass IOV_MAX (1024) and
        # pwritev fails with EINVAL when an initiator asks for thousands of marks at once.
        for start in range(0, room, _FILEMARK_BATCH):
            batch = min(_FILEMARK_BATCH, room - start)
            self._write(self._end, [marks[: batch * ENTRY_SIZE]])
            self._append_filemarks_index(self._end, batch)
            self._end += batch * ENTRY_SIZE
        return room

    def _write(self, offset: int, parts: list[bytes | memoryview]) -> None:
        self._dirty = True
        total = sum(len(p) for p in parts)
        done = os.pwritev(self._fd, parts, offset)
        if done != total:  # a regular file may write short; finish from one buffer
            rest = memoryview(b"".join(bytes(p) for p in parts))[done:]
            while rest:
                n = os.pwrite(self._fd, rest, offset + done)
                rest, done = rest[n:], done + n

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"{self.path} is open read-only")

    def flush(self) -> None:
        """Make everything written so far durable (a drive's synchronize-at-file-mark)."""
        if self._dirty and not self.read_only:
            os.fdatasync(self._fd)
            self._dirty = False
            self._set_durable(self._end)

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TapeImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
