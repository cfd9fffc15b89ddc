"""CDB decoding shared by the block commands: LBA/length layouts and the common checks.

The unpackers are precompiled ``struct`` formats so the READ/WRITE path decodes a CDB in
one C call. Each returns ``(flags, lba, blocks)`` where ``flags`` is CDB byte 1.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from scsi.command import ScsiCommand, ScsiResult
from scsi.sense import CheckCondition, FieldPointer, Reason

if TYPE_CHECKING:
    from scsi.block_device import BlockDevice

# (flags, lba, blocks) of the 10-, 12- and 16-byte layouts shared by READ, WRITE, VERIFY,
# WRITE AND VERIFY, PRE-FETCH, SYNCHRONIZE CACHE and WRITE SAME.
LBA10 = struct.Struct(">xBIxH").unpack_from
LBA12 = struct.Struct(">xBII").unpack_from
LBA16 = struct.Struct(">xBQI").unpack_from
# Byte offset of the transfer length field, for field pointers.
LENGTH_BYTE = {6: 4, 10: 7, 12: 6, 16: 10}


def lba6(cdb: bytes) -> tuple[int, int]:
    """(lba, blocks) of READ(6)/WRITE(6): a 21-bit LBA, and 0 blocks meaning 256."""
    return ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3], cdb[4] or 256


def check_range(lu: BlockDevice, lba: int, blocks: int) -> None:
    """LBA OUT OF RANGE unless ``[lba, lba+blocks)`` lies within the medium."""
    if lba + blocks > lu.num_blocks:
        raise CheckCondition(Reason.LBA_OUT_OF_RANGE)


def check_transfer(lu: BlockDevice, lba: int, blocks: int, cdb_length: int) -> None:
    """Transfer length within the Block Limits maximum, then the range within the medium."""
    if blocks > lu.max_transfer_blocks:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(LENGTH_BYTE[cdb_length]))
    if lba + blocks > lu.num_blocks:
        raise CheckCondition(Reason.LBA_OUT_OF_RANGE)


def reject_protection(flags: int) -> None:
    """RDPROTECT/WRPROTECT/VRPROTECT (byte 1, bits 7-5): the LU has no protection info."""
    if flags & 0xE0:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=7))


def check_writable(lu: BlockDevice) -> None:
    if lu.read_only:
        # SWP set by an initiator says so (SPC-4 control page); otherwise the LU is.
        soft = lu.software_write_protect and not lu.hardware_read_only
        raise CheckCondition(Reason.SOFTWARE_WRITE_PROTECTED if soft else Reason.WRITE_PROTECTED)


def data_out_length(cmd: ScsiCommand) -> int:
    return 0 if cmd.data_out is None else len(cmd.data_out)


def data_out_mismatch(lu: BlockDevice, needed: int) -> ScsiResult:
    """CHECK CONDITION for a Data-Out that does not fit the CDB, before anything is written.

    ``data_out_used`` carries what the CDB asked for, so the transport reports the
    residual between it and what the initiator sent (libiscsi's *Residuals tests accept
    this answer, ILLEGAL REQUEST / INVALID FIELD IN COMMAND INFORMATION UNIT, or GOOD
    after writing a truncated transfer; LIO answers the same way).
    """
    result = lu.check_condition(CheckCondition(Reason.INVALID_FIELD_IN_INFORMATION_UNIT))
    result.data_out_used = needed
    return result


def good(delivered: int, needed: int) -> ScsiResult:
    """GOOD, reporting how much Data-Out was used when the initiator sent more."""
    return ScsiResult() if delivered == needed else ScsiResult(data_out_used=needed)


def first_difference(a: bytearray | bytes, b: memoryview | bytes) -> int | None:
    """Offset of the first byte where ``a`` and ``b`` differ (same length), or None.

    ``a`` must be bytes or a bytearray: their comparison with any buffer is a memcmp,
    where comparing two memoryviews goes item by item (~100x slower).
    """
    if a == b:
        return None
    step = 4096
    start = 0
    # Narrow down by pages with C-speed comparisons before looking at single bytes.
    while a[start : start + step] == b[start : start + step]:
        start += step
    for i in range(start, min(start + step, len(a))):
        if a[i] != b[i]:
            return i
    return None  # unreachable when lengths match


def miscompare(offset: int) -> CheckCondition:
    """MISCOMPARE DURING VERIFY OPERATION with the byte offset in INFORMATION."""
    return CheckCondition(Reason.MISCOMPARE_DURING_VERIFY, information=offset)


__all__ = [
    "LBA10",
    "LBA12",
    "LBA16",
    "LENGTH_BYTE",
    "check_range",
    "check_transfer",
    "check_writable",
    "data_out_length",
    "data_out_mismatch",
    "first_difference",
    "good",
    "lba6",
    "miscompare",
    "reject_protection",
]
