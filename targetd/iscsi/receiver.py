"""Framing of the inbound byte stream into PDUs, receiving straight into final buffers.

The transport asks :meth:`PduReceiver.get_buffer` where the next bytes should land and
reports with :meth:`PduReceiver.buffer_updated` how many did. Headers and small data
segments land in a staging buffer and are parsed in place; a large data segment (a
Data-Out burst, immediate write data) lands directly in the buffer its command will hand
to the SCSI layer, chosen by the ``placement`` callback once the header is known. That is
how a 1 MiB write reaches the backing store without being copied in Python.

The header is validated before its data segment is read (length against the negotiated
limit, header digest), so a bad PDU is refused before its payload is buffered.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, auto

from targetd.iscsi.crc import crc32c
from targetd.iscsi.pdu import BHS_LEN, Pdu, RejectReason, padded

STAGING_SIZE = 1 << 18
# Segments at least this long skip the staging buffer when a placement is offered.
DIRECT_THRESHOLD = 1 << 14
# Before login completes the initiator has not heard our limit; RFC 7143 lets us accept
# the default 8192 and login text rarely needs more.
LOGIN_MAX_DATA = 65536

Placement = Callable[[bytes], memoryview | None]


class IscsiProtocolError(Exception):
    """A PDU the protocol says to refuse. ``fatal`` ones close the connection."""

    def __init__(
        self,
        message: str,
        reason: RejectReason = RejectReason.PROTOCOL_ERROR,
        *,
        bhs: bytes = b"",
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.bhs = bhs
        self.fatal = fatal


class DigestError(IscsiProtocolError):
    pass


class _State(Enum):
    HEADER = auto()
    DIRECT = auto()
    FAILED = auto()


class PduReceiver:
    """Turns received bytes into :class:`Pdu` objects (sans-I/O).

    ``placement(bhs)`` may return a writable memoryview of exactly the data segment
    length; the segment is then received into it and ``Pdu.data`` is that view.
    Otherwise ``Pdu.data`` is an independent ``bytes``.
    """

    def __init__(self, placement: Placement | None = None) -> None:
        self._buf = bytearray(STAGING_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte
        self._end = 0  # one past the last received byte
        self._state = _State.HEADER
        self._placement = placement
        self.header_digest = False
        self.data_digest = False
        self.max_data_length = LOGIN_MAX_DATA
        # DIRECT state: the PDU whose data segment is being received out of line.
        self._pending_bhs = b""
        self._pending_ahs = b""
        self._dest: memoryview = memoryview(b"")
        self._dest_filled = 0
        self._trailer = bytearray(8)  # padding and data digest of a DIRECT segment
        self._trailer_len = 0
        self._trailer_filled = 0
        self._ready: list[Pdu | IscsiProtocolError] = []
        # After a segment received out of line, offer room for one header only: the next
        # PDU is likely large too (a write's bursts), and its data should go straight into
        # its own buffer rather than into staging and then be copied (measured: a 1 MiB
        # write spent over a quarter of the daemon's time in that copy). One more small
        # recv per large PDU is far cheaper than copying up to STAGING_SIZE bytes.
        self._header_only = False

    # -- transport side --------------------------------------------------------------
    def get_buffer(self) -> memoryview:
        if self._state is _State.DIRECT:
            if self._dest_filled < len(self._dest):
                return self._dest[self._dest_filled :]
            return memoryview(self._trailer)[self._trailer_filled : self._trailer_len]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < 4096:
            self._compact()
        if self._header_only:
            want = self._start + BHS_LEN + (4 if self.header_digest else 0)
            if self._end < want:
                return self._view[self._end : want]
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> list[Pdu | IscsiProtocolError]:
        """Account for ``nbytes`` received; return the PDUs that are now complete.

        A PDU refused by framing (digest error) appears in the list as its
        :class:`IscsiProtocolError`, in stream order; a fatal framing error is raised
        after the PDUs before it have been returned by an earlier call.
        """
        if self._state is _State.DIRECT:
            if self._dest_filled < len(self._dest):
                self._dest_filled += nbytes
            else:
                self._trailer_filled += nbytes
            self._finish_direct_if_done()
        elif self._state is _State.HEADER:
            self._end += nbytes
        self._parse()
        ready, self._ready = self._ready, []
        return ready

    # -- parsing -----------------------------------------------------------------------
    def _compact(self) -> None:
        remaining = self._end - self._start
        self._buf[:remaining] = self._buf[self._start : self._end]
        self._start, self._end = 0, remaining

    def _parse(self) -> None:
        buf = self._buf
        while self._state is _State.HEADER:
            avail = self._end - self._start
            if avail < BHS_LEN:
                return
            s = self._start
            ahs_len = buf[s + 4] * 4
            hdr_len = BHS_LEN + ahs_len + (4 if self.header_digest else 0)
            if avail < hdr_len:
                if hdr_len > len(buf) - s:
                    self._compact()
                return
            bhs = bytes(buf[s : s + BHS_LEN])
            if self.header_digest and not self._header_digest_ok(s, BHS_LEN + ahs_len):
                # RFC 7143 6.7: a header that fails its digest cannot frame the stream.
                self._fail(DigestError("header digest mismatch", bhs=bhs, fatal=True))
                return
            ahs = bytes(buf[s + BHS_LEN : s + BHS_LEN + ahs_len]) if ahs_len else b""
            dlen = (bhs[5] << 16) | (bhs[6] << 8) | bhs[7]
            if dlen > self.max_data_length:
                self._fail(
                    IscsiProtocolError(
                        f"data segment of {dlen} bytes exceeds the limit {self.max_data_length}",
                        bhs=bhs,
                        fatal=True,
                    )
                )
                return
            seg_len = ((dlen + 3) & ~3) + (4 if self.data_digest and dlen else 0)  # padded()
            dest = self._placement(bhs) if (self._placement and dlen) else None
            if dest is None and dlen >= DIRECT_THRESHOLD and hdr_len + seg_len > len(buf):
                dest = memoryview(bytearray(dlen))
            if dest is not None and (dlen >= DIRECT_THRESHOLD or avail - hdr_len < seg_len):
                self._start = s + hdr_len
                self._begin_direct(bhs, ahs, dest, dlen, seg_len)
                continue
            self._header_only = False
            if avail - hdr_len < seg_len:
                if hdr_len + seg_len > len(buf) - s:
                    self._compact()
                return
            d0 = s + hdr_len
            if dlen == 0:
                data: bytes | memoryview = b""
            elif dest is not None:
                dest[:dlen] = buf[d0 : d0 + dlen]
                data = dest
            else:
                data = bytes(buf[d0 : d0 + dlen])
            self._start = d0 + seg_len
            if self.data_digest and dlen:
                got = int.from_bytes(buf[d0 + padded(dlen) : d0 + seg_len], "little")
                if crc32c.crc32c(self._view[d0 : d0 + padded(dlen)]) != got:
                    self._ready.append(_data_digest_error(bhs))
                    continue
            self._ready.append(Pdu(bhs, ahs, data))

    def _begin_direct(
        self, bhs: bytes, ahs: bytes, dest: memoryview, dlen: int, seg_len: int
    ) -> None:
        """Move what already arrived of the segment into ``dest``; receive the rest there."""
        self._pending_bhs, self._pending_ahs = bhs, ahs
        self._dest = dest[:dlen]
        self._trailer_len = seg_len - dlen
        self._trailer_filled = 0
        have = min(self._end - self._start, seg_len)
        take = min(have, dlen)
        self._dest[:take] = self._buf[self._start : self._start + take]
        self._dest_filled = take
        extra = have - take
        self._trailer[:extra] = self._buf[self._start + take : self._start + have]
        self._trailer_filled = extra
        self._start += have
        self._state = _State.DIRECT
        self._finish_direct_if_done()

    def _finish_direct_if_done(self) -> None:
        if self._dest_filled < len(self._dest) or self._trailer_filled < self._trailer_len:
            return
        self._state = _State.HEADER
        dest = self._dest
        dlen = len(dest)
        # A small segment goes out of line too when it arrived in pieces (a 4 KiB write's
        # immediate data): a stream of those must still be read many PDUs per recv.
        self._header_only = dlen >= DIRECT_THRESHOLD
        if self.data_digest:
            pad = padded(dlen) - dlen
            crc = crc32c.crc32c(dest)
            if pad:
                crc = crc32c.crc32c(bytes(self._trailer[:pad]), crc)
            got = int.from_bytes(self._trailer[pad : pad + 4], "little")
            if got != crc:
                self._ready.append(_data_digest_error(self._pending_bhs))
                self._dest = memoryview(b"")
                return
        self._ready.append(Pdu(self._pending_bhs, self._pending_ahs, dest))
        self._dest = memoryview(b"")

    def _header_digest_ok(self, s: int, length: int) -> bool:
        want = crc32c.crc32c(self._view[s : s + length])
        return want == int.from_bytes(self._buf[s + length : s + length + 4], "little")

    def _fail(self, error: IscsiProtocolError) -> None:
        """Stop framing for good: nothing after a fatal error can be trusted."""
        self._ready.append(error)
        self._state = _State.FAILED
        self._start = self._end = 0


def _data_digest_error(bhs: bytes) -> DigestError:
    # RFC 7143 7.8: the PDU is discarded and the initiator told with a Reject.
    return DigestError("data digest mismatch", RejectReason.DATA_DIGEST_ERROR, bhs=bhs)
