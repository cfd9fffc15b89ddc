"""The data path of a SCSI command: Data-Out bursts in, Data-In segments out, residuals.

Pure functions and a small record, free of connection state, so the rules of RFC 7143
sections 11.7 (Data-Out/Data-In) and 11.4.5 (residuals) read in one place and test alone.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from scsi.command import FileRange
from targetd.iscsi import pdu as P
from targetd.iscsi.pdu import Op, put_u32

_DATA_IN_HDR = P.new_header(Op.DATA_IN, 0)
# Opcode, flags, status, TotalAHSLength 0 + DataSegmentLength, LUN, ITT, TTT, (StatSN,
# ExpCmdSN, MaxCmdSN left for the sender), DataSN, buffer offset, residual count.
_ONE_DATA_IN = struct.Struct(">BBxBI8sII12xIII")


@dataclass(slots=True)
class Burst:
    """A Data-Out sequence we expect: the unsolicited one (TTT 0xffffffff) or an R2T's."""

    offset: int  # where its next Data-Out must start
    end: int  # one past its last byte
    datasn: int = 0  # the DataSN its next Data-Out must carry

    def takes(self, offset: int, length: int) -> bool:
        """Whether a Data-Out of ``length`` bytes at ``offset`` continues it exactly."""
        return offset == self.offset and offset + length <= self.end

    @property
    def done(self) -> bool:
        return self.offset >= self.end


def residual(
    read: bool,
    write: bool,
    edtl: int,
    data_in: int | None,
    data_out_used: int | None,
    good: bool,
) -> tuple[int, int, int]:
    """(flags, residual count, Data-In bytes to send) for a command's final status.

    ``edtl`` is the initiator's expected data transfer length; ``data_in`` how much Data-In
    the command produced (None: none), ``data_out_used`` how much of the Data-Out it
    consumed (None: all). Overflow means the command wanted more than ``edtl`` allowed,
    underflow less (RFC 7143 11.4.5); only ``edtl`` bytes of Data-In are ever sent.
    """
    flags = residual_count = 0
    if write:
        used = data_out_used if data_out_used is not None else edtl
        if used < edtl:
            flags, residual_count = P.FLAG_UNDERFLOW, edtl - used
        elif used > edtl:
            flags, residual_count = P.FLAG_OVERFLOW, used - edtl
    send = 0
    if data_in is not None and (read or not write):
        send = min(data_in, edtl) if read else 0
        if data_in < edtl and read:
            flags, residual_count = P.FLAG_UNDERFLOW, edtl - data_in
        elif data_in > edtl:
            flags, residual_count = P.FLAG_OVERFLOW, data_in - edtl
    elif read and edtl and good:
        flags, residual_count = P.FLAG_UNDERFLOW, edtl
    return flags, residual_count, send


def single_data_in(
    length: int, lun: bytes, itt: int, flags: int = 0x80, status: int = 0, residual: int = 0
) -> bytearray:
    """The header of a Data-In that carries a whole read (DataSN 0, offset 0) in one pack:
    what :func:`data_in_pdus` yields for data within one segment and one burst, for the
    common small read, without a generator and a dozen field writes."""
    hdr = bytearray(P.BHS_LEN)
    _ONE_DATA_IN.pack_into(
        hdr, 0, Op.DATA_IN, flags, status, length, lun, itt, P.RESERVED_TAG, 0, 0, residual
    )
    return hdr


def data_in_pdus(
    data: memoryview | FileRange, *, lun: bytes, itt: int, max_segment: int, max_burst: int
) -> Iterator[tuple[bytearray, memoryview | FileRange, bool]]:
    """Split ``data`` into Data-In PDUs: (header, segment, is the last one).

    Each segment is at most the initiator's MaxRecvDataSegmentLength and none crosses a
    MaxBurstLength boundary; the last PDU of each burst has the F bit. The caller stamps
    the last one with the status (or sends a SCSI Response after it) and the sequence
    numbers.
    """
    n = len(data)
    offset = datasn = 0
    itt_bytes = itt.to_bytes(4, "big")
    while offset < n:
        length = min(max_segment, n - offset, max_burst - offset % max_burst)
        end = offset + length
        hdr = bytearray(_DATA_IN_HDR)
        hdr[5:8] = length.to_bytes(3, "big")
        hdr[8:16] = lun
        hdr[16:20] = itt_bytes
        put_u32(hdr, 20, P.RESERVED_TAG)
        put_u32(hdr, 36, datasn)
        put_u32(hdr, 40, offset)
        if end == n or end % max_burst == 0:
            hdr[1] = 0x80
        yield hdr, data[offset:end], end == n
        datasn += 1
        offset = end
