"""From a decoded copy list to steps that can run: every segment checked before any byte
moves, so a bad segment late in the list cannot leave a half-done copy behind.

A step knows its resolved endpoints, byte offsets and lengths. Problems a parameter list
carries on its face are ILLEGAL REQUEST (CheckCondition); problems with the copy targets
(unreachable, wrong device type, range past the end, write-protected) are COPY ABORTED
naming the segment (CopyAborted), as SPC-4 and libiscsi's ExtendedCopy tests expect.
"""

from __future__ import annotations

from dataclasses import dataclass

from scsi.block_device import BlockDevice
from scsi.command import Nexus
from scsi.logical_unit import LogicalUnit
from scsi.sense import CheckCondition, FieldPointer, Reason, build_sense
from xcopy import labels, limits
from xcopy.access import read_opcode, write_opcode, write_protection
from xcopy.endpoints import BLOCK, STREAM, Endpoint, Unresolved, resolve
from xcopy.errors import CopyAborted, lba_out_of_range_sense
from xcopy.params import (
    BLOCK_TO_BLOCK,
    BLOCK_TO_STREAM,
    BYTES_BLOCK_TO_BLOCK,
    CHECK_LABEL,
    INLINE_TO_STREAM,
    LOCATE,
    SPACE,
    SPLIT_PAIR,
    START_DIGEST,
    STREAM_TO_BLOCK,
    WRITE_FILEMARKS,
    WRITE_LABEL,
    CopyList,
    Segment,
)
from xcopy.policies import in_pair

_SOURCE_TYPE = {
    BLOCK_TO_BLOCK: BLOCK,
    BYTES_BLOCK_TO_BLOCK: BLOCK,
    BLOCK_TO_STREAM: BLOCK,
    STREAM_TO_BLOCK: STREAM,
}
_DESTINATION_TYPE = {
    BLOCK_TO_BLOCK: BLOCK,
    BYTES_BLOCK_TO_BLOCK: BLOCK,
    BLOCK_TO_STREAM: STREAM,
    STREAM_TO_BLOCK: BLOCK,
    INLINE_TO_STREAM: STREAM,
    WRITE_FILEMARKS: STREAM,
    SPACE: STREAM,
    LOCATE: STREAM,
    SPLIT_PAIR: BLOCK,
    START_DIGEST: STREAM,
    WRITE_LABEL: STREAM,
    CHECK_LABEL: STREAM,
}


@dataclass(frozen=True, slots=True)
class Step:
    """One segment, ready to run. Byte offsets are absolute within the LU's store.

    ``length`` is the bytes read from the source (block sources) or written to the
    destination (stream to block); ``record_length``/``records`` describe the stream side;
    ``pad``: the stream side is longer than the block side by zero padding.
    """

    segment: Segment
    source: Endpoint | None
    destination: Endpoint
    source_offset: int = 0
    destination_offset: int = 0
    length: int = 0
    record_length: int = 0
    records: int = 0
    pad: int = 0  # bytes of padding added (block to stream) or dropped (stream to block)
    inline: bytes = b""

    @property
    def unit(self) -> int:
        """Residues are reported in this many bytes (blocks for block segments)."""
        if self.segment.type_code in (BLOCK_TO_BLOCK, BLOCK_TO_STREAM) and self.source:
            return self.source.block_size or 1
        if self.segment.type_code == STREAM_TO_BLOCK:
            return self.destination.block_size or 1
        return 1


def plan(
    copy_list: CopyList, luns: dict[int, LogicalUnit], this_lu: LogicalUnit, nexus: Nexus
) -> list[Step]:
    memo: dict[int, LogicalUnit | None] = {}  # each CSCD matched once per list
    steps = [_step(copy_list, s, luns, this_lu, nexus, memo) for s in copy_list.segments]
    for step in steps:  # reservations, before a byte moves (the run checks every chunk too)
        _check_access(step, nexus)
    leading = True
    for step in steps:  # a split comes first: the backup after it reads its image
        is_split = step.segment.type_code == SPLIT_PAIR
        if is_split and not leading:
            raise _illegal(Reason.INVALID_FIELD_IN_PARAMETER_LIST, step.segment, 0)
        leading = leading and is_split
    return steps


def _resolve(
    copy_list: CopyList,
    seg: Segment,
    cscd_id: int,
    wanted: int,
    luns: dict[int, LogicalUnit],
    this_lu: LogicalUnit,
    nexus: Nexus,
    field: int,
    memo: dict[int, LogicalUnit | None] | None = None,
) -> Endpoint:
    try:
        end = resolve(cscd_id, copy_list.cscds, luns, this_lu, nexus, memo)
    except Unresolved as err:
        reason = (
            Reason.INCORRECT_COPY_TARGET_DEVICE_TYPE
            if err.wrong_type
            else Reason.COPY_TARGET_DEVICE_NOT_REACHABLE
        )
        raise CopyAborted(reason, seg.index, field=field) from None
    if end.device_type != wanted:
        raise CopyAborted(Reason.INCORRECT_COPY_TARGET_DEVICE_TYPE, seg.index, field=field)
    cscd = end.cscd
    wrong_size = cscd is not None and cscd.block_length not in (0, end.block_size)
    if wrong_size and end.device_type == BLOCK and end.lu is not None:
        assert cscd is not None  # the descriptor says another block size than the LU has
        raise CheckCondition(
            Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(cscd.offset + 29, in_cdb=False)
        )
    return end


def _check_range(end: Endpoint, seg: Segment, offset: int, length: int, field: int) -> None:
    lu = end.lu
    if lu is None:
        return
    size = getattr(lu, "num_blocks", 0) * end.block_size
    if offset + length > size:
        raise CopyAborted(
            Reason.COPY_ABORTED_NO_ADDITIONAL_SENSE,
            seg.index,
            residue=length // (end.block_size or 1),
            field=field,
            target_sense=lba_out_of_range_sense(),
            from_destination=field >= 20,
        )


def _check_writable(end: Endpoint, seg: Segment) -> None:
    lu = end.lu
    protected = write_protection(lu) if lu is not None else None
    if protected is not None:
        raise CopyAborted(
            Reason.COPY_ABORTED_NO_ADDITIONAL_SENSE,
            seg.index,
            field=6,
            target_sense=build_sense(protected),
        )


# What a segment does to its destination, as the command a host would send for it.
_DESTINATION_OPCODE = {WRITE_FILEMARKS: 0x10, SPACE: 0x11, LOCATE: 0x2B, CHECK_LABEL: 0x08}
# Segments that neither write their stream CSCD nor move its position.
_NO_WRITE = (SPACE, LOCATE, START_DIGEST, CHECK_LABEL)


def _check_access(step: Step, nexus: Nexus) -> None:
    """The copy acts for ``nexus``: an LU that would refuse that nexus's own READ or WRITE
    (a reservation another nexus holds) refuses the copy (COPY ABORTED, the LU's status
    forwarded) before any byte moves."""
    code = step.segment.type_code
    if code in (SPLIT_PAIR, START_DIGEST):  # a pair operation; nothing done to the LU
        return
    checks: list[tuple[LogicalUnit | None, int, bool]] = []
    if step.source is not None:
        src = step.source.lu
        checks.append((src, read_opcode(src) if src is not None else 0, False))
    dst = step.destination.lu
    if dst is not None:
        checks.append((dst, _DESTINATION_OPCODE.get(code) or write_opcode(dst), True))
    for lu, opcode, is_destination in checks:
        if lu is None:
            continue
        refused = lu.admit(nexus, opcode)
        if refused is not None:
            raise CopyAborted(
                Reason.COPY_ABORTED_NO_ADDITIONAL_SENSE,
                step.segment.index,
                residue=-(-step.length // step.unit),
                field=6 if is_destination else 4,
                from_destination=is_destination,
                target_status=int(refused.status),
                message=f"{lu.identity.device_id}: {refused.status.name}",
            )


def _illegal(reason: Reason, seg: Segment, field: int) -> CheckCondition:
    return CheckCondition(reason, FieldPointer(seg.offset + field, in_cdb=False))


def _step(
    copy_list: CopyList,
    seg: Segment,
    luns: dict[int, LogicalUnit],
    this_lu: LogicalUnit,
    nexus: Nexus,
    memo: dict[int, LogicalUnit | None] | None = None,
) -> Step:
    code = seg.type_code
    source = None
    if code in _SOURCE_TYPE:
        source = _resolve(
            copy_list, seg, seg.source, _SOURCE_TYPE[code], luns, this_lu, nexus, 4, memo
        )
    destination = _resolve(
        copy_list, seg, seg.destination, _DESTINATION_TYPE[code], luns, this_lu, nexus, 6, memo
    )
    if code == SPLIT_PAIR:
        lu = destination.lu
        if not isinstance(lu, BlockDevice) or not in_pair(lu):
            raise _illegal(Reason.PAIR_NOT_FOUND, seg, 6)
        return Step(seg, None, destination)
    if code not in _NO_WRITE:  # everything else writes its destination
        _check_writable(destination, seg)
    if code in (WRITE_FILEMARKS, SPACE, LOCATE):
        return Step(seg, None, destination)
    if code in (START_DIGEST, WRITE_LABEL, CHECK_LABEL):
        return _label_step(copy_list, seg, destination)
    if code == BLOCK_TO_BLOCK:
        assert source is not None
        unit = destination.block_size if seg.dc else source.block_size
        length = seg.blocks * unit
        if length % source.block_size or length % destination.block_size:
            raise _illegal(Reason.COPY_SEGMENT_GRANULARITY_VIOLATION, seg, 10)
        src_off = seg.source_lba * source.block_size
        dst_off = seg.destination_lba * destination.block_size
        _check_range(source, seg, src_off, length, 12)
        _check_range(destination, seg, dst_off, length, 20)
        return Step(seg, source, destination, src_off, dst_off, length)
    if code == BYTES_BLOCK_TO_BLOCK:
        assert source is not None
        if seg.byte_count % (1 << limits.DATA_SEGMENT_GRANULARITY):
            raise _illegal(Reason.COPY_SEGMENT_GRANULARITY_VIOLATION, seg, 8)
        src_off = seg.source_lba * source.block_size + seg.source_offset
        dst_off = seg.destination_lba * destination.block_size + seg.destination_offset
        _check_range(source, seg, src_off, seg.byte_count, 12)
        _check_range(destination, seg, dst_off, seg.byte_count, 20)
        return Step(seg, source, destination, src_off, dst_off, seg.byte_count)
    if code == INLINE_TO_STREAM:
        if seg.source_offset % (1 << limits.INLINE_DATA_GRANULARITY):
            raise _illegal(Reason.COPY_SEGMENT_GRANULARITY_VIOLATION, seg, 8)
        end = seg.source_offset + seg.byte_count
        if end > len(copy_list.inline_data):
            raise _illegal(Reason.INLINE_DATA_LENGTH_EXCEEDED, seg, 12)
        record, records = _stream_shape(destination, seg, seg.byte_count)
        return Step(
            seg,
            None,
            destination,
            length=seg.byte_count,
            record_length=record,
            records=records,
            pad=record * records - seg.byte_count,
            inline=copy_list.inline_data[seg.source_offset : end],
        )
    if code == BLOCK_TO_STREAM:
        assert source is not None
        length = seg.blocks * source.block_size
        src_off = seg.source_lba * source.block_size
        _check_range(source, seg, src_off, length, 16)
        record, records = _stream_records(destination, seg)
        stream_bytes = record * records
        if stream_bytes != length and not (stream_bytes > length and destination.pad):
            raise _illegal(Reason.UNEXPECTED_INEXACT_SEGMENT, seg, 9)
        return Step(
            seg,
            source,
            destination,
            src_off,
            0,
            length,
            record,
            records,
            stream_bytes - length,
        )
    # STREAM_TO_BLOCK
    assert source is not None
    length = seg.blocks * destination.block_size
    dst_off = seg.destination_lba * destination.block_size
    _check_range(destination, seg, dst_off, length, 16)
    record, records = _stream_records(source, seg)
    stream_bytes = record * records
    if stream_bytes != length and not (stream_bytes > length and source.pad):
        raise _illegal(Reason.UNEXPECTED_INEXACT_SEGMENT, seg, 9)
    return Step(
        seg, source, destination, 0, dst_off, length, record, records, stream_bytes - length
    )


def _label_step(copy_list: CopyList, seg: Segment, stream: Endpoint) -> Step:
    """START DIGEST, WRITE LABEL, CHECK LABEL: the end label is one variable-length record
    of 512 bytes, so the stream CSCD must be in variable mode."""
    if stream.fixed and stream.cscd is not None:
        raise CheckCondition(
            Reason.INVALID_FIELD_IN_PARAMETER_LIST,
            FieldPointer(stream.cscd.offset + 28, bit=0, in_cdb=False),
        )
    if seg.type_code != WRITE_LABEL:
        return Step(seg, None, stream)
    if seg.source_offset % (1 << limits.INLINE_DATA_GRANULARITY):
        raise _illegal(Reason.COPY_SEGMENT_GRANULARITY_VIOLATION, seg, 8)
    end = seg.source_offset + seg.byte_count
    if end > len(copy_list.inline_data):
        raise _illegal(Reason.INLINE_DATA_LENGTH_EXCEEDED, seg, 12)
    backup_id = copy_list.inline_data[seg.source_offset : end]
    if not labels.valid_id(backup_id):  # 1-64 of A-Z a-z 0-9 . _ : -
        raise _illegal(Reason.INVALID_FIELD_IN_PARAMETER_LIST, seg, 12)
    return Step(seg, None, stream, record_length=labels.SIZE, records=1, inline=backup_id)


def _stream_records(stream: Endpoint, seg: Segment) -> tuple[int, int]:
    """(record length, record count) of a stream segment's STREAM DEVICE TRANSFER LENGTH:
    bytes of one record in variable mode, blocks of the CSCD's block length if FIXED."""
    if stream.fixed:
        if not 0 < stream.block_size <= limits.MAX_STREAM_TRANSFER:
            assert stream.cscd is not None
            raise CheckCondition(
                Reason.INVALID_FIELD_IN_PARAMETER_LIST,
                FieldPointer(stream.cscd.offset + 29, in_cdb=False),
            )
        return stream.block_size, seg.stream_length
    if seg.stream_length > limits.MAX_STREAM_TRANSFER:
        raise _illegal(Reason.INVALID_FIELD_IN_PARAMETER_LIST, seg, 9)
    return seg.stream_length, 1 if seg.stream_length else 0


def _stream_shape(stream: Endpoint, seg: Segment, length: int) -> tuple[int, int]:
    """Records that carry ``length`` inline bytes: one record, or fixed blocks (padded)."""
    if not stream.fixed:
        if length > limits.MAX_STREAM_TRANSFER:
            raise _illegal(Reason.INVALID_FIELD_IN_PARAMETER_LIST, seg, 12)
        return length, 1 if length else 0
    size = stream.block_size
    if not 0 < size <= limits.MAX_STREAM_TRANSFER:
        raise _illegal(Reason.INVALID_FIELD_IN_PARAMETER_LIST, seg, 12)
    records = -(-length // size)
    if records * size != length and not stream.pad:
        raise _illegal(Reason.UNEXPECTED_INEXACT_SEGMENT, seg, 12)
    return size, records
