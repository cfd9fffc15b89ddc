"""SBC commands of the block LU: READ/WRITE, VERIFY, WRITE AND VERIFY, ORWRITE, COMPARE AND
WRITE, PRE-FETCH, SYNCHRONIZE CACHE, READ CAPACITY, START STOP UNIT.

Thin-provisioning commands (UNMAP, WRITE SAME, GET LBA STATUS) are in
scsi.sbc_provisioning; both land in ``SBC_TABLE``, layered on SPC's.

READ and WRITE are the product's hot path: one precompiled ``struct`` call decodes the
CDB, a read allocates one bytearray that the store fills in place, and a write hands the
transport's Data-Out memoryview straight to the store. Their handlers decode the CDB and
return the coroutine that does the work, rather than awaiting it in one more frame.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from scsi.cdb import (
    LBA10,
    LBA12,
    LBA16,
    check_range,
    check_transfer,
    check_writable,
    data_out_length,
    data_out_mismatch,
    first_difference,
    good,
    lba6,
    miscompare,
    reject_protection,
)
from scsi.command import ScsiCommand, ScsiResult
from scsi.opcodes import OpcodeTable
from scsi.sbc_provisioning import PROVISIONING_TABLE
from scsi.sense import CheckCondition, FieldPointer, Reason
from scsi.spc import SPC_TABLE

if TYPE_CHECKING:
    from scsi.block_device import BlockDevice

SBC_TABLE = OpcodeTable("sbc", SPC_TABLE)
SBC_TABLE.extend(PROVISIONING_TABLE)
_cmd = SBC_TABLE.command

FUA = 0x08
# Reads at least this large are sent from the file (sendfile) where the transport and the
# store allow: below it the two saved copies cost less than the extra system calls.
FILE_DATA_IN_MIN = 64 * 1024
_FF4 = b"\xff" * 4
_FF8 = b"\xff" * 8
_CAW = struct.Struct(">xBQ").unpack_from
_SA16 = struct.Struct(">2xQI").unpack_from  # LBA, allocation length of SERVICE ACTION IN(16)


# -- READ -----------------------------------------------------------------------------
async def _read(
    lu: BlockDevice, cmd: ScsiCommand, lba: int, blocks: int, cdb_length: int
) -> ScsiResult:
    check_transfer(lu, lba, blocks, cdb_length)
    if not blocks:
        return ScsiResult()
    size = lu.block_size
    if cmd.file_data_in and blocks * size >= FILE_DATA_IN_MIN:
        sendable = lu.file_range(lba * size, blocks * size)
        if sendable is not None:
            return ScsiResult(data=sendable)
    pool = cmd.buffers
    # read_into fills every byte (holes read as zeros), so a recycled buffer is safe.
    buf = pool.take(blocks * size) if pool is not None else bytearray(blocks * size)
    view = memoryview(buf)
    read_now = lu.read_now
    if read_now is None or not read_now(lba * size, view):  # a cached read: no coroutine
        await lu.store.read_into(lba * size, view)
    return ScsiResult(data=buf)


@_cmd(0x08, "READ(6)", bytes([0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x07]))
def read6(lu: BlockDevice, cmd: ScsiCommand) -> Coroutine[Any, Any, ScsiResult]:
    lba, blocks = lba6(cmd.cdb)
    return _read(lu, cmd, lba, blocks, 6)


@_cmd(0x28, "READ(10)", bytes([0x28, 0xFE, *_FF4, 0x1F, 0xFF, 0xFF, 0x07]))
def read10(lu: BlockDevice, cmd: ScsiCommand) -> Coroutine[Any, Any, ScsiResult]:
    flags, lba, blocks = LBA10(cmd.cdb)
    if flags & 0xE0:
        reject_protection(flags)
    return _read(lu, cmd, lba, blocks, 10)


@_cmd(0xA8, "READ(12)", bytes([0xA8, 0xFE, *_FF4, *_FF4, 0x1F, 0x07]))
def read12(lu: BlockDevice, cmd: ScsiCommand) -> Coroutine[Any, Any, ScsiResult]:
    flags, lba, blocks = LBA12(cmd.cdb)
    if flags & 0xE0:
        reject_protection(flags)
    return _read(lu, cmd, lba, blocks, 12)


@_cmd(0x88, "READ(16)", bytes([0x88, 0xFE, *_FF8, *_FF4, 0x1F, 0x07]))
def read16(lu: BlockDevice, cmd: ScsiCommand) -> Coroutine[Any, Any, ScsiResult]:
    flags, lba, blocks = LBA16(cmd.cdb)
    if flags & 0xE0:
        reject_protection(flags)
    return _read(lu, cmd, lba, blocks, 16)


# -- WRITE ----------------------------------------------------------------------------
async def _write(
    lu: BlockDevice, cmd: ScsiCommand, lba: int, blocks: int, fua: bool, cdb_length: int
) -> ScsiResult:
    if lu.read_only:
        check_writable(lu)
    check_transfer(lu, lba, blocks, cdb_length)
    needed = blocks * lu.block_size
    data = cmd.data_out
    delivered = 0 if data is None else len(data)
    if delivered < needed:
        whole = delivered - delivered % lu.block_size
        if whole:
            assert data is not None
            await lu.write_bytes(lba * lu.block_size, data[:whole], fua)
        return ScsiResult(data_out_used=needed)
    if needed:
        assert data is not None
        offset = lba * lu.block_size
        if delivered != needed:
            data = data[:needed]
        if not lu.write_now(offset, data, fua):  # a small write: no coroutine below this
            await lu.write_bytes(offset, data, fua)
    return ScsiResult() if delivered == needed else ScsiResult(data_out_used=needed)


@_cmd(0x0A, "WRITE(6)", bytes([0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x07]))
def write6(lu: BlockDevice, cmd: ScsiCommand) -> Coroutine[Any, Any, ScsiResult]:
    lba, blocks = lba6(cmd.cdb)
    return _write(lu, cmd, lba, blocks, False, 6)


@_cmd(0x2A, "WRITE(10)", bytes([0x2A, 0xFA, *_FF4, 0x1F, 0xFF, 0xFF, 0x07]))
def write10(lu: BlockDevice, cmd: ScsiCommand) -> Coroutine[Any, Any, ScsiResult]:
    flags, lba, blocks = LBA10(cmd.cdb)
    if flags & 0xE0:
        reject_protection(flags)
    return _write(lu, cmd, lba, blocks, bool(flags & FUA), 10)


@_cmd(0xAA, "WRITE(12)", bytes([0xAA, 0xFA, *_FF4, *_FF4, 0x1F, 0x07]))
def write12(lu: BlockDevice, cmd: ScsiCommand) -> Coroutine[Any, Any, ScsiResult]:
    flags, lba, blocks = LBA12(cmd.cdb)
    if flags & 0xE0:
        reject_protection(flags)
    return _write(lu, cmd, lba, blocks, bool(flags & FUA), 12)


@_cmd(0x8A, "WRITE(16)", bytes([0x8A, 0xFA, *_FF8, *_FF4, 0x1F, 0x07]))
def write16(lu: BlockDevice, cmd: ScsiCommand) -> Coroutine[Any, Any, ScsiResult]:
    flags, lba, blocks = LBA16(cmd.cdb)
    if flags & 0xE0:
        reject_protection(flags)
    return _write(lu, cmd, lba, blocks, bool(flags & FUA), 16)


# -- WRITE AND VERIFY -------------------------------------------------------------------
async def _write_and_verify(
    lu: BlockDevice, cmd: ScsiCommand, flags: int, lba: int, blocks: int, cdb_length: int
) -> ScsiResult:
    reject_protection(flags)
    if flags & 0x04:  # BYTCHK 10b/11b: only "no compare" and "compare what was written"
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=2))
    # What was just written compares equal by construction, so BYTCHK 01b is the write.
    return await _write(lu, cmd, lba, blocks, False, cdb_length)


_LBA_DECODERS = {10: LBA10, 12: LBA12, 16: LBA16}


def _register_lba_family(
    body: Callable[..., Awaitable[ScsiResult]], name: str, rows: tuple[tuple[int, bytes], ...]
) -> None:
    """Register the 10/12/16-byte variants of a command whose CDBs differ only in where
    LBA and length sit: one decoder per length, one body for all."""
    for opcode, usage in rows:
        length = len(usage)
        decode = _LBA_DECODERS[length]

        async def handler(
            lu: BlockDevice, cmd: ScsiCommand, decode: Callable = decode, length: int = length
        ) -> ScsiResult:
            flags, lba, blocks = decode(cmd.cdb)
            return await body(lu, cmd, flags, lba, blocks, length)

        _cmd(opcode, f"{name}({length})", usage)(handler)


_register_lba_family(
    _write_and_verify,
    "WRITE AND VERIFY",
    (
        (0x2E, bytes([0x2E, 0xF6, *_FF4, 0x1F, 0xFF, 0xFF, 0x07])),
        (0xAE, bytes([0xAE, 0xF6, *_FF4, *_FF4, 0x1F, 0x07])),
        (0x8E, bytes([0x8E, 0xF6, *_FF8, *_FF4, 0x1F, 0x07])),
    ),
)


# -- VERIFY -----------------------------------------------------------------------------
async def _verify(
    lu: BlockDevice, cmd: ScsiCommand, flags: int, lba: int, blocks: int, cdb_length: int
) -> ScsiResult:
    """BYTCHK 00b: the medium is readable (a file always is); 01b: compare the Data-Out
    with the blocks; 11b: compare one Data-Out block with each block."""
    reject_protection(flags)
    bytchk = (flags >> 1) & 0x03
    if bytchk == 0x02:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=2))
    if bytchk == 0:
        check_range(lu, lba, blocks)
        return ScsiResult()
    check_transfer(lu, lba, blocks, cdb_length)
    size = lu.block_size
    needed = 0 if not blocks else blocks * size if bytchk == 0x01 else size
    delivered = data_out_length(cmd)
    if delivered < needed:
        return data_out_mismatch(lu, needed)
    if not blocks:
        return good(delivered, needed)
    assert cmd.data_out is not None
    buf = bytearray(blocks * size)
    await lu.store.read_into(lba * size, memoryview(buf))
    expected = cmd.data_out[:needed] if bytchk == 0x01 else bytes(cmd.data_out[:size]) * blocks
    offset = first_difference(buf, expected)
    if offset is not None:
        raise miscompare(offset)
    return good(delivered, needed)


_register_lba_family(
    _verify,
    "VERIFY",
    (
        (0x2F, bytes([0x2F, 0xF6, *_FF4, 0x1F, 0xFF, 0xFF, 0x07])),
        (0xAF, bytes([0xAF, 0xF6, *_FF4, *_FF4, 0x1F, 0x07])),
        (0x8F, bytes([0x8F, 0xF6, *_FF8, *_FF4, 0x1F, 0x07])),
    ),
)


# -- read-modify-write commands, atomic against other writes to their range ------------
@_cmd(0x8B, "ORWRITE(16)", bytes([0x8B, 0xFA, *_FF8, *_FF4, 0x1F, 0x07]))
async def orwrite16(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    flags, lba, blocks = LBA16(cmd.cdb)
    reject_protection(flags)
    check_writable(lu)
    check_transfer(lu, lba, blocks, 16)
    size = lu.block_size
    needed = blocks * size
    delivered = data_out_length(cmd)
    if delivered < needed:
        return data_out_mismatch(lu, needed)
    if not needed:
        return good(delivered, needed)
    assert cmd.data_out is not None
    offset = lba * size
    async with lu.exclusive(offset, needed):
        buf = bytearray(needed)
        await lu.store.read_into(offset, memoryview(buf))
        merged = int.from_bytes(buf, "big") | int.from_bytes(cmd.data_out[:needed], "big")
        await lu.store.write(
            offset, merged.to_bytes(needed, "big"), fua=bool(flags & FUA) or not lu.write_cache
        )
    return good(delivered, needed)


@_cmd(
    0x89,
    "COMPARE AND WRITE",
    bytes([0x89, 0xFA, *_FF8, 0, 0, 0, 0xFF, 0x1F, 0x07]),
)
async def compare_and_write(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    """Compare the first half of the Data-Out with the blocks; only if equal, write the
    second half. The range is held exclusively, so no other write interleaves."""
    flags, lba = _CAW(cmd.cdb)
    blocks = cmd.cdb[13]
    reject_protection(flags)
    check_writable(lu)
    if blocks > lu.max_compare_and_write_blocks:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(13))
    check_range(lu, lba, blocks)
    size = lu.block_size
    half = blocks * size
    needed = 2 * half
    delivered = data_out_length(cmd)
    if not blocks and delivered:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(13))
    if delivered != needed:  # both halves must be there, and nothing else
        return data_out_mismatch(lu, needed)
    if not blocks:
        return ScsiResult()
    assert cmd.data_out is not None
    offset = lba * size
    fua = bool(flags & FUA) or not lu.write_cache
    async with lu.exclusive(offset, half):
        # A store shared with other clients (an RBD image) compares and writes in one
        # operation where the data lives, so the command is atomic beyond this daemon too.
        atomic = getattr(lu.store, "compare_and_write", None)
        if atomic is not None:
            try:
                mismatch = await atomic(
                    offset, cmd.data_out[:half], cmd.data_out[half:needed], fua=fua
                )
            except NotImplementedError:  # not for this range: compared here instead
                pass
            else:
                if mismatch is not None:
                    raise miscompare(mismatch)
                return ScsiResult()
        buf = bytearray(half)
        await lu.store.read_into(offset, memoryview(buf))
        mismatch = first_difference(buf, cmd.data_out[:half])
        if mismatch is not None:
            raise miscompare(mismatch)
        await lu.store.write(offset, cmd.data_out[half:needed], fua=fua)
    return ScsiResult()


# -- cache management -------------------------------------------------------------------
@_cmd(0x34, "PRE-FETCH(10)", bytes([0x34, 0x02, *_FF4, 0x1F, 0xFF, 0xFF, 0x07]))
async def prefetch10(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    # GOOD rather than CONDITION MET: we promise nothing about what stays cached.
    _, lba, blocks = LBA10(cmd.cdb)
    check_range(lu, lba, blocks)
    return ScsiResult()


@_cmd(0x90, "PRE-FETCH(16)", bytes([0x90, 0x02, *_FF8, *_FF4, 0x1F, 0x07]))
async def prefetch16(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    _, lba, blocks = LBA16(cmd.cdb)
    check_range(lu, lba, blocks)
    return ScsiResult()


async def _synchronize(lu: BlockDevice, lba: int, blocks: int) -> ScsiResult:
    # A range cannot be synced on its own (sync_file_range gives no durability for
    # metadata), so the whole file is; IMMED is served by finishing first.
    check_range(lu, lba, blocks)
    await lu.store.flush()
    return ScsiResult()


@_cmd(0x35, "SYNCHRONIZE CACHE(10)", bytes([0x35, 0x02, *_FF4, 0x1F, 0xFF, 0xFF, 0x07]))
async def synchronize_cache10(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    _, lba, blocks = LBA10(cmd.cdb)
    return await _synchronize(lu, lba, blocks)


@_cmd(0x91, "SYNCHRONIZE CACHE(16)", bytes([0x91, 0x02, *_FF8, *_FF4, 0x1F, 0x07]))
async def synchronize_cache16(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    _, lba, blocks = LBA16(cmd.cdb)
    return await _synchronize(lu, lba, blocks)


# -- capacity and power -------------------------------------------------------------------
@_cmd(0x25, "READ CAPACITY(10)", bytes([0x25, 0x00, *_FF4, 0, 0, 0x01, 0x07]))
async def read_capacity10(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if not cdb[8] & 0x01 and any(cdb[2:6]):  # an LBA without PMI (SBC-3 5.15)
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2))
    last = min(lu.num_blocks - 1, 0xFFFFFFFF)
    return ScsiResult(data=last.to_bytes(4, "big") + lu.block_size.to_bytes(4, "big"))


@_cmd(
    0x9E,
    "READ CAPACITY(16)",
    bytes([0x9E, 0x1F, *_FF8, *_FF4, 0x01, 0x07]),
    service_action=0x10,
)
async def read_capacity16(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    _, allocation = _SA16(cmd.cdb)
    data = bytearray(32)
    data[0:8] = (lu.num_blocks - 1).to_bytes(8, "big")
    data[8:12] = lu.block_size.to_bytes(4, "big")
    # byte 12: no protection; byte 13: one logical block per physical block;
    # byte 14: LBPME (thin provisioned) and LBPRZ (holes read as zeros), alignment 0.
    data[14] = 0x80 | 0x40
    return ScsiResult(data=bytes(data[:allocation]))


# -- READ DEFECT DATA: a file has no grown or primary defects --------------------------
@_cmd(0x37, "READ DEFECT DATA(10)", bytes([0x37, 0x00, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0x07]))
async def read_defect_data10(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    """An empty list in the format asked for, both lists marked valid if requested."""
    allocation = int.from_bytes(cmd.cdb[7:9], "big")
    header = bytes([0, cmd.cdb[2] & 0x1F, 0, 0])
    return ScsiResult(data=header[:allocation])


@_cmd(0xB7, "READ DEFECT DATA(12)", bytes([0xB7, 0x1F, 0, 0, 0, 0, *_FF4, 0, 0x07]))
async def read_defect_data12(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    allocation = int.from_bytes(cmd.cdb[6:10], "big")
    header = bytes([0, cmd.cdb[1] & 0x1F, 0, 0, 0, 0, 0, 0])
    return ScsiResult(data=header[:allocation])


@_cmd(0x1B, "START STOP UNIT", bytes([0x1B, 0x01, 0x00, 0x0F, 0xF7, 0x07]))
async def start_stop_unit(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    """Accepted whatever it asks: there is no medium to spin or eject. Stopping writes the
    cache out unless NO_FLUSH says not to."""
    byte4 = cmd.cdb[4]
    if not byte4 & 0x01 and not byte4 & 0x04 and byte4 >> 4 == 0:
        await lu.store.flush()
    return ScsiResult()
