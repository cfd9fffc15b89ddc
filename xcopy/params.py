"""EXTENDED COPY parameter lists, LID1 (83h/00h) and LID4 (83h/01h), decoded without I/O.

``decode(service_action, data)`` returns a :class:`CopyList` or raises
:class:`scsi.sense.CheckCondition` with the sense the parameter list earns and a field
pointer into the parameter list. Every length is checked against ``xcopy.limits`` before
anything is read behind it; the checks run in the order libiscsi's tests tell apart:
length of the whole list first (1A/00), then descriptor counts (26/06, 26/08), then
descriptor types (26/07, 26/09), then fields (26/00).

Nothing here knows which LUs exist: CSCD descriptors are resolved later (xcopy.cscd).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from scsi.sense import CheckCondition, FieldPointer, Reason
from xcopy import limits

LID1, LID4 = 0x00, 0x01

# LIST ID USAGE (header byte 1, bits 4-3).
USAGE_HOLD = 0  # results (and data) kept until retrieved
USAGE_RESERVED = 1
USAGE_NO_HOLD = 2  # results kept, no data held
USAGE_NONE = 3  # the list identifier is not used: nothing kept

IDENTIFICATION_CSCD = 0xE4
THIS_LU = 0xFFFF  # CSCD ID meaning the LU the command was sent to

# Segment descriptor type codes served, and the DESCRIPTOR LENGTH each must carry.
BLOCK_TO_STREAM = 0x00
STREAM_TO_BLOCK = 0x01
BLOCK_TO_BLOCK = 0x02
INLINE_TO_STREAM = 0x04
BYTES_BLOCK_TO_BLOCK = 0x0A
WRITE_FILEMARKS = 0x10
SPACE = 0x11
LOCATE = 0x12
# Vendor-specific (C0h-DFh): split the pair whose volume the destination CSCD names, then
# go on with the following segments (the backup). docs/xcopy.md, "split-and-backup".
SPLIT_PAIR = 0xC0
# Vendor-specific: self-describing backups (docs/xcopy.md). START DIGEST: hash what the
# following segments (of this and later lists of the same I_T nexus) write to or read from
# the stream CSCD; WRITE LABEL: write the end label carrying that digest (inline data: the
# backup's identifier); CHECK LABEL: read the end label there and compare.
START_DIGEST = 0xC1
WRITE_LABEL = 0xC2
CHECK_LABEL = 0xC3
SEGMENT_LENGTHS = {
    BLOCK_TO_STREAM: 0x14,
    STREAM_TO_BLOCK: 0x14,
    BLOCK_TO_BLOCK: 0x18,
    INLINE_TO_STREAM: 0x0C,
    BYTES_BLOCK_TO_BLOCK: 0x1C,
    WRITE_FILEMARKS: 0x08,
    SPACE: 0x08,
    LOCATE: 0x08,
    SPLIT_PAIR: 0x08,
    START_DIGEST: 0x08,
    WRITE_LABEL: 0x0C,
    CHECK_LABEL: 0x08,
}
SUPPORTED_DESCRIPTORS = (*sorted(SEGMENT_LENGTHS), IDENTIFICATION_CSCD)

_LID1 = struct.Struct(">BBH4xII")  # 16 bytes
_LID4 = struct.Struct(">BBH11xBB3xI18xHHH")  # 48 bytes
_SEG_HEAD = struct.Struct(">BBHHH")  # type, flags, length, source, destination


@dataclass(frozen=True, slots=True)
class Cscd:
    """A copy source or destination (CSCD) descriptor: an identification descriptor (E4h).

    ``offset`` is where it starts in the parameter list (for field pointers).
    """

    index: int
    offset: int
    nul: bool
    device_type: int
    code_set: int
    association: int
    designator_type: int
    designator: bytes
    pad: bool
    fixed: bool  # stream devices: fixed-block records of ``block_length``
    block_length: int


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment descriptor. Fields a type does not use stay 0."""

    index: int
    offset: int
    type_code: int
    dc: bool
    cat: bool
    source: int = 0
    destination: int = 0
    blocks: int = 0  # block device NUMBER OF BLOCKS
    stream_length: int = 0  # STREAM DEVICE TRANSFER LENGTH (bytes, or blocks if FIXED)
    source_lba: int = 0
    destination_lba: int = 0
    byte_count: int = 0  # 0Ah NUMBER OF BYTES, 04h inline byte count
    source_offset: int = 0  # 0Ah byte offsets, 04h inline data offset
    destination_offset: int = 0
    count: int = 0  # file marks to write, or SPACE count (signed)
    space_code: int = 0
    locate_to: int = 0
    policy: int = 0  # SPLIT PAIR: the backup policy for this copy (0: the pair's own)


@dataclass(frozen=True, slots=True)
class CopyList:
    service_action: int
    list_id: int
    list_id_usage: int
    priority: int
    immed: bool = False
    g_sense: bool = False
    cscds: tuple[Cscd, ...] = ()
    segments: tuple[Segment, ...] = ()
    inline_data: bytes = field(default=b"", repr=False)

    @property
    def keeps_results(self) -> bool:
        return self.list_id_usage != USAGE_NONE


def _bad(reason: Reason, byte: int, bit: int | None = None) -> CheckCondition:
    return CheckCondition(reason, FieldPointer(byte, bit=bit, in_cdb=False))


def _invalid(byte: int, bit: int | None = None) -> CheckCondition:
    return _bad(Reason.INVALID_FIELD_IN_PARAMETER_LIST, byte, bit)


def _length_error() -> CheckCondition:
    return CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)


def decode(service_action: int, data: bytes | memoryview) -> CopyList | None:
    """The copy list in ``data`` (the whole parameter list), or None for an empty one."""
    data = bytes(data)
    if not data:
        return None  # PARAMETER LIST LENGTH 0: nothing to do (SPC-4 6.4.1)
    if service_action == LID1:
        if len(data) < limits.LID1_HEADER:
            raise _length_error()
        list_id, flags, cscd_len, seg_len, inline_len = _LID1.unpack_from(data)
        header = limits.LID1_HEADER
        immed = g_sense = False
    else:
        if len(data) < limits.LID4_HEADER:
            raise _length_error()
        (fmt, flags, header_cscd_len, flags2, _hdr_type, list_id, cscd_len, seg_len, inline_len) = (
            _LID4.unpack_from(data)
        )
        if fmt != 0x01:
            raise _invalid(0)
        if header_cscd_len:  # header CSCD descriptors (for ROD tokens) are not served
            raise _invalid(2)
        if flags2 & 0xFC:
            raise _invalid(15)
        header = limits.LID4_HEADER
        immed, g_sense = bool(flags2 & 0x01), bool(flags2 & 0x02)
    usage = (flags >> 3) & 0x03
    if flags & 0xC0:
        raise _invalid(1, 7)
    if usage == USAGE_RESERVED:
        raise _invalid(1, 4)
    if immed and usage == USAGE_NONE:  # nobody could ever learn how it ended
        raise _invalid(1, 4)
    # Whole-list lengths first: too long for the limits, or longer than what was sent.
    if cscd_len + seg_len > limits.MAX_DESCRIPTOR_LIST_LENGTH:
        raise _length_error()
    if header + cscd_len + seg_len + inline_len > len(data):
        raise _length_error()
    if inline_len > limits.MAX_INLINE_DATA_LENGTH:
        raise _bad(Reason.INLINE_DATA_LENGTH_EXCEEDED, 12 if service_action == LID1 else 46)
    cscd_field = 2 if service_action == LID1 else 42
    if cscd_len % limits.CSCD_LENGTH:
        raise _invalid(cscd_field)
    if cscd_len // limits.CSCD_LENGTH > limits.MAX_CSCD_DESCRIPTORS:
        raise _bad(Reason.TOO_MANY_TARGET_DESCRIPTORS, cscd_field)
    seg_start = header + cscd_len
    seg_bounds = _segment_bounds(data, seg_start, seg_start + seg_len)
    if len(seg_bounds) > limits.MAX_SEGMENT_DESCRIPTORS:
        raise _bad(Reason.TOO_MANY_SEGMENT_DESCRIPTORS, 8 if service_action == LID1 else 44)
    cscds = tuple(
        _cscd(data, i, header + i * limits.CSCD_LENGTH)
        for i in range(cscd_len // limits.CSCD_LENGTH)
    )
    segments = tuple(_segment(data, i, off) for i, off in enumerate(seg_bounds))
    inline_start = seg_start + seg_len
    return CopyList(
        service_action=service_action,
        list_id=list_id,
        list_id_usage=usage,
        priority=flags & 0x07,
        immed=immed,
        g_sense=g_sense,
        cscds=cscds,
        segments=segments,
        inline_data=data[inline_start : inline_start + inline_len],
    )


def _segment_bounds(data: bytes, start: int, end: int) -> list[int]:
    """Start offsets of the segment descriptors in ``[start, end)``; each must fit."""
    bounds = []
    offset = start
    while offset < end:
        if offset + 4 > end:
            raise _length_error()
        length = 4 + int.from_bytes(data[offset + 2 : offset + 4], "big")
        if offset + length > end:
            raise _length_error()
        bounds.append(offset)
        offset += length
        if len(bounds) > limits.MAX_SEGMENT_DESCRIPTORS:
            break  # enough to know there are too many
    return bounds


def _cscd(data: bytes, index: int, offset: int) -> Cscd:
    raw = data[offset : offset + limits.CSCD_LENGTH]
    if raw[0] != IDENTIFICATION_CSCD:
        raise _bad(Reason.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE, offset)
    # Byte 1: LU ID TYPE (ignored, SPC-4 made it so), NUL (obsolete, served), type.
    length = raw[7]
    if length > 20:
        raise _invalid(offset + 7)
    device_type = raw[1] & 0x1F
    return Cscd(
        index=index,
        offset=offset,
        nul=bool(raw[1] & 0x20),
        device_type=device_type,
        code_set=raw[4] & 0x0F,
        association=(raw[5] >> 4) & 0x03,
        designator_type=raw[5] & 0x0F,
        designator=bytes(raw[8 : 8 + length]),
        pad=bool(raw[28] & 0x04),
        fixed=bool(raw[28] & 0x01) if device_type == 0x01 else False,
        block_length=int.from_bytes(raw[29:32], "big"),
    )


def _segment(data: bytes, index: int, offset: int) -> Segment:
    # Type and length first, from the 4 bytes _segment_bounds vouched for: a descriptor
    # of DESCRIPTOR LENGTH 0 at the end of the list has no 8-byte head to unpack.
    type_code = data[offset]
    if type_code not in SEGMENT_LENGTHS:
        raise _bad(Reason.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE, offset)
    if int.from_bytes(data[offset + 2 : offset + 4], "big") != SEGMENT_LENGTHS[type_code]:
        raise _invalid(offset + 2)
    _, flags, length, source, destination = _SEG_HEAD.unpack_from(data, offset)
    raw = data[offset : offset + 4 + length]
    base: dict[str, Any] = {
        "index": index,
        "offset": offset,
        "type_code": type_code,
        "dc": bool(flags & 0x02),
        "cat": bool(flags & 0x01),
    }
    if type_code in (BLOCK_TO_STREAM, STREAM_TO_BLOCK):
        return Segment(
            **base,
            source=source,
            destination=destination,
            stream_length=int.from_bytes(raw[9:12], "big"),
            blocks=int.from_bytes(raw[14:16], "big"),
            source_lba=int.from_bytes(raw[16:24], "big") if type_code == BLOCK_TO_STREAM else 0,
            destination_lba=int.from_bytes(raw[16:24], "big")
            if type_code == STREAM_TO_BLOCK
            else 0,
        )
    if type_code == BLOCK_TO_BLOCK:
        return Segment(
            **base,
            source=source,
            destination=destination,
            blocks=int.from_bytes(raw[10:12], "big"),
            source_lba=int.from_bytes(raw[12:20], "big"),
            destination_lba=int.from_bytes(raw[20:28], "big"),
        )
    if type_code == BYTES_BLOCK_TO_BLOCK:
        return Segment(
            **base,
            source=source,
            destination=destination,
            byte_count=int.from_bytes(raw[8:12], "big"),
            source_lba=int.from_bytes(raw[12:20], "big"),
            destination_lba=int.from_bytes(raw[20:28], "big"),
            source_offset=int.from_bytes(raw[28:30], "big"),
            destination_offset=int.from_bytes(raw[30:32], "big"),
        )
    if type_code in (INLINE_TO_STREAM, WRITE_LABEL):
        return Segment(
            **base,
            destination=destination,
            source_offset=int.from_bytes(raw[8:12], "big"),
            byte_count=int.from_bytes(raw[12:16], "big"),
        )
    # Tape operations on the destination CSCD: bytes 4-5 reserved.
    if type_code == WRITE_FILEMARKS:
        if raw[8] & 0x02:  # WSMK: setmarks are not served
            raise _invalid(offset + 8, 1)
        return Segment(**base, destination=destination, count=int.from_bytes(raw[9:12], "big"))
    if type_code in (START_DIGEST, CHECK_LABEL):
        return Segment(**base, destination=destination)
    if type_code == SPLIT_PAIR:
        if raw[8] > 3:
            raise _invalid(offset + 8)
        return Segment(**base, destination=destination, policy=raw[8])
    if type_code == SPACE:
        code = raw[8] & 0x07
        if code not in (0, 1, 3):  # blocks, file marks, end of data
            raise _invalid(offset + 8, 2)
        count = int.from_bytes(raw[9:12], "big", signed=True)
        return Segment(**base, destination=destination, space_code=code, count=count)
    return Segment(**base, destination=destination, locate_to=int.from_bytes(raw[8:12], "big"))
