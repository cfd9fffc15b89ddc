"""Thin-provisioning commands of the block LU: UNMAP, WRITE SAME (10/16), GET LBA STATUS.

A deallocated range is a hole in the backing file; holes read as zeros (LBPRZ), so WRITE
SAME of a zero block may deallocate, and GET LBA STATUS reads the file's extent map.
scsi.sbc merges this table into ``SBC_TABLE``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from scsi.cdb import (
    LBA10,
    LBA16,
    check_range,
    check_writable,
    data_out_length,
    data_out_mismatch,
    good,
    reject_protection,
)
from scsi.command import ScsiCommand, ScsiResult
from scsi.opcodes import OpcodeTable
from scsi.sense import CheckCondition, FieldPointer, Reason

if TYPE_CHECKING:
    from scsi.block_device import BlockDevice

PROVISIONING_TABLE = OpcodeTable("sbc-provisioning")
_cmd = PROVISIONING_TABLE.command

_FF4 = b"\xff" * 4
_FF8 = b"\xff" * 8
_UNMAP_HEADER = struct.Struct(">HH4x")
_UNMAP_DESCRIPTOR = struct.Struct(">QI4x")
_LBA_STATUS = struct.Struct(">QIB3x")
_SA16 = struct.Struct(">2xQI").unpack_from

# WRITE SAME writes its pattern in pieces of about this many bytes.
_PATTERN_BYTES = 1 << 20
MAPPED, DEALLOCATED = 0x0, 0x1


# -- UNMAP ------------------------------------------------------------------------------
@_cmd(0x42, "UNMAP", bytes([0x42, 0x01, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, 0x07]))
async def unmap(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if cdb[1] & 0x01:  # ANCHOR: anchored (mapped-but-unwritten) blocks are not offered
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=0))
    check_writable(lu)
    length = int.from_bytes(cdb[7:9], "big")
    delivered = data_out_length(cmd)
    if length == 0:
        return good(delivered, 0)
    if length < 8:
        raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR, FieldPointer(7))
    if delivered < length:
        return data_out_mismatch(lu, length)
    assert cmd.data_out is not None
    ranges = _unmap_ranges(lu, cmd.data_out[:length])
    size = lu.block_size
    for lba, blocks in merged_ranges(ranges):
        await lu.deallocate(lba * size, blocks * size, punch=True)
    return good(delivered, length)


def merged_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(lba, blocks)`` ranges sorted, with adjacent and overlapping ones joined: the same
    blocks, deallocated in as few calls as they allow. A list of one-block descriptors
    (libiscsi's Unmap.Simple sends up to 256) is one hole punched, or on an RBD LU one
    discard sent to the cluster, not one per descriptor."""
    out: list[tuple[int, int]] = []
    for lba, blocks in sorted(ranges):
        if out and lba <= out[-1][0] + out[-1][1]:
            start, length = out[-1]
            out[-1] = (start, max(length, lba + blocks - start))
        else:
            out.append((lba, blocks))
    return out


def _unmap_ranges(lu: BlockDevice, params: memoryview) -> list[tuple[int, int]]:
    """Validate the whole UNMAP parameter list before anything is unmapped."""
    _, descriptors_length = _UNMAP_HEADER.unpack_from(params)
    if descriptors_length + 8 > len(params):
        raise CheckCondition(Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(2, in_cdb=False))
    count = descriptors_length // 16  # a trailing partial descriptor is ignored
    if count > lu.max_unmap_descriptors:
        raise CheckCondition(Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(2, in_cdb=False))
    ranges: list[tuple[int, int]] = []
    total = 0
    for i in range(count):
        at = 8 + 16 * i
        lba, blocks = _UNMAP_DESCRIPTOR.unpack_from(params, at)
        total += blocks
        if blocks > lu.max_unmap_blocks or total > lu.max_unmap_blocks:
            raise CheckCondition(
                Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(at + 8, in_cdb=False)
            )
        check_range(lu, lba, blocks)
        if blocks:
            ranges.append((lba, blocks))
    return ranges


# -- WRITE SAME -----------------------------------------------------------------------------
async def _write_same(
    lu: BlockDevice, cmd: ScsiCommand, flags: int, lba: int, blocks: int, length_byte: int
) -> ScsiResult:
    reject_protection(flags)
    if flags & 0x10:  # ANCHOR
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=4))
    check_writable(lu)
    no_data_out = bool(flags & 0x01)  # NDOB (WRITE SAME(16) only): a block of zeros
    if blocks == 0:  # Block Limits WSNZ=0: to the end of the medium
        check_range(lu, lba, 0)
        blocks = lu.num_blocks - lba
    if blocks > lu.max_write_same_blocks:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(length_byte))
    check_range(lu, lba, blocks)
    size = lu.block_size
    needed = 0 if no_data_out else size
    delivered = data_out_length(cmd)
    if delivered != needed:  # exactly one block, or nothing with NDOB
        return data_out_mismatch(lu, needed)
    block = cmd.data_out[:size] if cmd.data_out is not None and not no_data_out else None
    offset, length = lba * size, blocks * size
    if not length:
        return ScsiResult()
    if block is None or not any(block) or flags & 0x08:
        # Zeros are what a hole reads: punch when UNMAP allows it, else zero in place.
        await lu.deallocate(offset, length, punch=bool(flags & 0x08))
        return ScsiResult()
    pattern = bytes(block) * max(1, min(blocks, _PATTERN_BYTES // size))
    end = offset + length
    while offset < end:
        piece = memoryview(pattern)[: min(len(pattern), end - offset)]
        await lu.write_bytes(offset, piece, False)
        offset += len(piece)
    return ScsiResult()


@_cmd(0x41, "WRITE SAME(10)", bytes([0x41, 0xE8, *_FF4, 0x1F, 0xFF, 0xFF, 0x07]))
async def write_same10(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    flags, lba, blocks = LBA10(cmd.cdb)
    return await _write_same(lu, cmd, flags & 0xFE, lba, blocks, 7)


@_cmd(0x93, "WRITE SAME(16)", bytes([0x93, 0xE9, *_FF8, *_FF4, 0x1F, 0x07]))
async def write_same16(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    flags, lba, blocks = LBA16(cmd.cdb)
    return await _write_same(lu, cmd, flags, lba, blocks, 10)


# -- GET LBA STATUS -------------------------------------------------------------------------
@_cmd(
    0x9E,
    "GET LBA STATUS",
    bytes([0x9E, 0x1F, *_FF8, *_FF4, 0x00, 0x07]),
    service_action=0x12,
)
async def get_lba_status(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    """Mapped and deallocated runs from the starting LBA on, as many as fit the
    allocation length (the first descriptor always starts at the requested LBA)."""
    lba, allocation = _SA16(cmd.cdb)
    if lba >= lu.num_blocks:
        raise CheckCondition(Reason.LBA_OUT_OF_RANGE)
    room = max(1, (allocation - 8) // 16)
    size = lu.block_size
    # Look no further than the descriptors could describe: each covers < 2^32 blocks.
    span = min(lu.num_blocks - lba, room * 0xFFFFFFFF)
    runs: list[list[int]] = []  # [start, end, status], adjacent runs merged
    for extent in lu.store.extents(lba * size, span * size):
        # A block partly mapped counts as mapped (only possible when the file system's
        # allocation unit is smaller than a logical block).
        if extent.mapped:
            start = extent.offset // size
            end = -(-(extent.offset + extent.length) // size)
        else:
            start = -(-extent.offset // size)
            end = (extent.offset + extent.length) // size
        status = MAPPED if extent.mapped else DEALLOCATED
        if runs:
            start = max(start, runs[-1][1])
        if end <= start:
            continue
        if runs and runs[-1][2] == status and runs[-1][1] == start:
            runs[-1][1] = end
        else:
            runs.append([start, end, status])
    descriptors = bytearray()
    for start, end, status in runs:
        while start < end and len(descriptors) < room * 16:
            count = min(end - start, 0xFFFFFFFF)
            descriptors += _LBA_STATUS.pack(start, count, status)
            start += count
    header = (len(descriptors) + 4).to_bytes(4, "big") + bytes(4)
    return ScsiResult(data=(header + descriptors)[:allocation])
