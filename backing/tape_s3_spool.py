"""The local side of an S3 tape's open segment (backing.tape_s3): what a WRITE's GOOD stands
on until the segment is completed in the bucket.

Three files per tape in the spool directory:

    BARCODE.spool.0, .1   header (magic, segment, *base*: the segment offset of the
                          file's first data byte), then segment bytes not yet in the
                          bucket. One is being filled; the other holds the part in flight
                          until it is in the bucket, then is emptied and filled next.
    BARCODE.journal       header (magic, segment), then one 8-byte length per entry of
                          the open segment (-1 for a file mark)

An entry's bytes go into the spool before its length goes into the journal, so an entry
the journal lists is whole in the spool, the bucket, or both. Nothing here is synced: a
SIGKILL of the daemon keeps the page cache; a power cut loses what was not written back,
and the mending on opening reports what the journal lists and nothing holds any more.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from pathlib import Path

SPOOL_MAGIC = b"TDSPOOL1"
JOURNAL_MAGIC = b"TDJRNL01"
SPOOL_HEAD = struct.Struct(">8sQQ")  # magic, segment, base
JOURNAL_HEAD = struct.Struct(">8sQ")  # magic, segment
_BIG_ENDIAN = sys.byteorder == "big"
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def lengths_bytes(lengths: array) -> bytes:
    """Entry lengths as stored (big-endian signed 8 bytes each)."""
    out = array("q", lengths)
    if not _BIG_ENDIAN:
        out.byteswap()
    return out.tobytes()


def lengths_from(raw: bytes) -> array:
    out = array("q")
    out.frombytes(raw[: len(raw) // 8 * 8])
    if not _BIG_ENDIAN:
        out.byteswap()
    return out


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class Spool:
    def __init__(self, directory: Path, barcode: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.paths = [self.directory / f"{barcode}.spool.{n}" for n in (0, 1)]
        self.journal_path = self.directory / f"{barcode}.journal"
        self._fds = [-1, -1]
        self._current = 0  # the spool file being filled
        self._journal_fd = -1
        self._journal_at = 0

    # -- writing the open segment --------------------------------------------------------
    def begin(self, segment: int) -> None:
        """A new open segment: both spool files empty (base 0), the journal empty."""
        self.close()
        for n, path in enumerate(self.paths):
            self._fds[n] = os.open(path, _FLAGS, 0o600)
            pwrite_all(self._fds[n], SPOOL_HEAD.pack(SPOOL_MAGIC, segment, 0), 0)
        self._current = 0
        self._journal_fd = os.open(self.journal_path, _FLAGS, 0o600)
        pwrite_all(self._journal_fd, JOURNAL_HEAD.pack(JOURNAL_MAGIC, segment), 0)
        self._journal_at = JOURNAL_HEAD.size

    def write(self, data: bytes | bytearray | memoryview, at: int) -> None:
        """Bytes at ``at`` (from the current file's base) of the file being filled."""
        pwrite_all(self._fds[self._current], data, SPOOL_HEAD.size + at)

    def journal(self, lengths: array) -> None:
        """Entries whose bytes are written: into the journal."""
        pwrite_all(self._journal_fd, lengths_bytes(lengths), self._journal_at)
        self._journal_at += 8 * len(lengths)

    def switch(self, segment: int, base: int) -> None:
        """The file being filled goes up as a part; the other one (whose part is in the
        bucket) is filled next, from segment offset ``base``. Emptied before its new
        base is written: a crash between leaves the old base and no bytes."""
        self._current ^= 1
        fd = self._fds[self._current]
        os.ftruncate(fd, SPOOL_HEAD.size)
        pwrite_all(fd, SPOOL_HEAD.pack(SPOOL_MAGIC, segment, base), 0)

    def close(self) -> None:
        """Let go of the files, leaving them as they are (as a crash would)."""
        for n, fd in enumerate(self._fds):
            if fd >= 0:
                os.close(fd)
                self._fds[n] = -1
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
            self._journal_fd = -1

    def drop(self) -> None:
        """The open segment is in the bucket: the files go."""
        self.close()
        self.journal_path.unlink(missing_ok=True)
        for path in self.paths:
            path.unlink(missing_ok=True)

    # -- reading what a crash left -------------------------------------------------------
    def read_journal(self) -> tuple[int, array] | None:
        """(segment, entry lengths) of the journal a crash left, or None."""
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) < JOURNAL_HEAD.size or raw[:8] != JOURNAL_MAGIC:
            return None
        _, segment = JOURNAL_HEAD.unpack_from(raw)
        return segment, lengths_from(raw[JOURNAL_HEAD.size :])

    def spooled(self, segment: int, landed: int) -> bytes:
        """The segment's bytes from ``landed`` on, as far as the spool files of
        ``segment`` hold them without a gap."""
        ranges: list[tuple[int, bytes]] = []
        for path in self.paths:
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            if len(raw) < SPOOL_HEAD.size:
                continue
            magic, spooled, base = SPOOL_HEAD.unpack_from(raw)
            if magic == SPOOL_MAGIC and spooled == segment:
                ranges.append((base, raw[SPOOL_HEAD.size :]))
        out = bytearray()
        for base, data in sorted(ranges, key=lambda r: r[0]):
            at = landed + len(out)
            if base <= at < base + len(data):
                out += data[at - base :]
        return bytes(out)
