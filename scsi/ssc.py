"""SSC commands of the tape LU: READ/WRITE(6), WRITE FILEMARKS, SPACE, REWIND, LOCATE,
READ POSITION, ERASE, LOAD UNLOAD, READ BLOCK LIMITS, REPORT DENSITY SUPPORT, PREVENT
ALLOW MEDIUM REMOVAL, and the tape's own TEST UNIT READY and REQUEST SENSE.

``SSC_TABLE`` is SPC's table with these layered on (INQUIRY, VPD, MODE SENSE/SELECT and
REPORT LUNS come from SPC; the mode hooks are TapeDevice's).

Sense follows what Linux's st driver reads: a read or space that meets a file mark ends
with NO SENSE, FILEMARK and the residue in INFORMATION; end of data is BLANK CHECK; a
record of the wrong length sets ILI with INFORMATION = requested - actual (negative when
the record was longer); writing in the early-warning zone succeeds with NO SENSE and EOM;
a write that no longer fits is VOLUME OVERFLOW with EOM and nothing written.

What touches the image file (records, file marks, the sync at a file mark, REWIND, LOCATE
and UNLOAD, the cut at the head) runs on the LU's I/O thread (``lu.io``, in command order);
the index lookups of SPACE, READ POSITION and the like answer from memory on the loop.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from scsi.cdb import data_out_mismatch
from scsi.command import ScsiCommand, ScsiResult, Status
from scsi.opcodes import OpcodeTable
from scsi.sense import CheckCondition, FieldPointer, Reason, build_sense
from scsi.spc import SPC_TABLE

if TYPE_CHECKING:
    from scsi.tape_device import TapeDevice

# SSC rows replace SPC's TEST UNIT READY and REQUEST SENSE, so they are gathered in their
# own table and layered over SPC's with ``extend`` (which overrides, where ``command``
# refuses a second registration).
_SSC_ONLY = OpcodeTable("ssc-only")
_cmd = _SSC_ONLY.command

# The longest record READ BLOCK LIMITS admits: what one WRITE(6) may carry, kept well
# below the 16 MiB - 1 the CDB field allows so one command's buffer stays bounded.
MAX_BLOCK_LENGTH = 8 << 20
MIN_BLOCK_LENGTH = 1
# A vendor-specific density code (80h..FFh): the image format has no real-world density.
DENSITY_CODE = 0x80
DENSITY_NAME = "TDTAPE01"

FIXED = 0x01
SILI = 0x02
# The most data one fixed-mode READ/WRITE(6) may move, whatever the block count says.
MAX_FIXED_TRANSFER = 64 << 20

SPACE_BLOCKS, SPACE_FILEMARKS, SPACE_END_OF_DATA = 0, 1, 3


def _invalid(byte: int, bit: int | None = None) -> CheckCondition:
    return CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(byte, bit=bit))


def _length24(cdb: bytes) -> int:
    return int.from_bytes(cdb[2:5], "big")


def _with_data(lu: TapeDevice, cc: CheckCondition, data: bytes | bytearray) -> ScsiResult:
    """CHECK CONDITION that still returns the data read before the condition."""
    return ScsiResult(Status.CHECK_CONDITION, data=data, sense=cc.sense(lu.descriptor_sense))


# -- status ----------------------------------------------------------------------------------
@_cmd(0x00, "TEST UNIT READY", bytes([0x00, 0, 0, 0, 0, 0x07]), conflict_exempt=True)
async def test_unit_ready(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    lu.require_medium()
    return ScsiResult()


@_cmd(
    0x03,
    "REQUEST SENSE",
    bytes([0x03, 0x01, 0, 0, 0xFF, 0x07]),
    ua_exempt=True,
    conflict_exempt=True,
)
async def request_sense(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    """A pending unit attention, else the drive's state: no medium, or EOM in the
    early-warning zone, or nothing to report."""
    if cmd.cdb[1] & 0xFE:
        raise _invalid(1)
    descriptor = bool(cmd.cdb[1] & 0x01)
    reason = lu.pop_unit_attention(cmd.nexus)
    if reason is not None:
        data = build_sense(reason, descriptor_format=descriptor)
    elif not lu.loaded:
        data = build_sense(Reason.MEDIUM_NOT_PRESENT, descriptor_format=descriptor)
    elif lu.at_early_warning:
        data = build_sense(
            Reason.END_OF_PARTITION_MEDIUM_DETECTED, eom=True, descriptor_format=descriptor
        )
    else:
        data = build_sense(Reason.NO_SENSE, descriptor_format=descriptor)
    return ScsiResult(data=data[: cmd.cdb[4]])


@_cmd(0x05, "READ BLOCK LIMITS", bytes([0x05, 0, 0, 0, 0, 0x07]))
async def read_block_limits(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    if cmd.cdb[1]:  # MLOC (READ BLOCK LIMITS with the max logical object id) is not served
        raise _invalid(1)
    data = bytes([0]) + MAX_BLOCK_LENGTH.to_bytes(3, "big") + MIN_BLOCK_LENGTH.to_bytes(2, "big")
    return ScsiResult(data=data)


# -- READ ------------------------------------------------------------------------------------
@_cmd(0x08, "READ(6)", bytes([0x08, 0x03, 0xFF, 0xFF, 0xFF, 0x07]))
async def read6(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    flags, length = cdb[1], _length24(cdb)
    if flags & 0xFC:
        raise _invalid(1)
    fixed = bool(flags & FIXED)
    if fixed and flags & SILI:
        raise _invalid(1, 1)
    if fixed and not lu.block_size:
        raise _invalid(1, 0)
    if fixed and length * lu.block_size > MAX_FIXED_TRANSFER:
        raise _invalid(2)
    lu.require_medium()
    if not length:
        return ScsiResult()
    if fixed:
        return await lu.io(_read_fixed, lu, length)
    return await lu.io(_read_variable, lu, length, bool(flags & SILI))


def _stop_at_mark_or_eod(lu: TapeDevice, residue: int) -> CheckCondition | None:
    """Before reading the object at the head: a file mark (passed) or end of data."""
    image, pos = lu.image, lu.position
    if pos >= len(image):
        return CheckCondition(Reason.END_OF_DATA_DETECTED, information=residue)
    if image.is_filemark(pos):
        lu.position = pos + 1
        return CheckCondition(Reason.FILEMARK_DETECTED, information=residue, filemark=True)
    return None


def _read_variable(lu: TapeDevice, length: int, sili: bool) -> ScsiResult:
    stop = _stop_at_mark_or_eod(lu, length)
    if stop is not None:
        raise stop
    record = lu.read_record(lu.position)
    lu.position += 1
    actual = len(record)
    if actual == length or (actual < length and sili):
        return ScsiResult(data=record)
    # Incorrect length: the head is past the record either way; a longer record is cut.
    cc = CheckCondition(Reason.NO_SENSE, information=length - actual, ili=True)
    return _with_data(lu, cc, record[:length])


def _read_fixed(lu: TapeDevice, count: int) -> ScsiResult:
    size = lu.block_size
    out = bytearray()
    for done in range(count):
        stop = _stop_at_mark_or_eod(lu, count - done)
        if stop is not None:
            return _with_data(lu, stop, out)
        record = lu.read_record(lu.position)
        lu.position += 1
        if len(record) != size:
            # A block of another size ends the command: ILI with the blocks not read.
            cc = CheckCondition(Reason.NO_SENSE, information=count - done, ili=True)
            return _with_data(lu, cc, out)
        out += record
    return ScsiResult(data=out)


# -- WRITE -----------------------------------------------------------------------------------
def _early_warning(lu: TapeDevice) -> None:
    if lu.at_early_warning:
        raise CheckCondition(Reason.END_OF_PARTITION_MEDIUM_DETECTED, information=0, eom=True)


def _overflow(residue: int) -> CheckCondition:
    return CheckCondition(Reason.VOLUME_OVERFLOW, information=residue, eom=True)


@_cmd(0x0A, "WRITE(6)", bytes([0x0A, 0x01, 0xFF, 0xFF, 0xFF, 0x07]))
async def write6(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    flags, length = cdb[1], _length24(cdb)
    if flags & 0xFE:
        raise _invalid(1)
    fixed = bool(flags & FIXED)
    if fixed and not lu.block_size:
        raise _invalid(1, 0)
    if not fixed and length > MAX_BLOCK_LENGTH:
        raise _invalid(2)
    needed = length * lu.block_size if fixed else length
    if needed > MAX_FIXED_TRANSFER:
        raise _invalid(2)
    lu.require_writable()
    data = cmd.data_out
    delivered = 0 if data is None else len(data)
    if delivered < needed:
        return data_out_mismatch(lu, needed)  # type: ignore[arg-type]
    result = ScsiResult() if delivered == needed else ScsiResult(data_out_used=needed)
    if not length:
        return result
    assert data is not None
    return await lu.io(_write_records, lu, data, length, fixed, result)


def _write_records(
    lu: TapeDevice, data: memoryview, length: int, fixed: bool, result: ScsiResult
) -> ScsiResult:
    """Blocking (the LU's I/O thread): WRITE(6)'s records at the head."""
    lu.begin_write()
    image = lu.image
    try:
        if not fixed:
            if not image.fits(length):
                raise _overflow(length)
            image.append_record(data[:length])
            lu.position += 1
        else:
            size = lu.block_size
            for done in range(length):
                if not image.fits(size):
                    raise _overflow(length - done)
                image.append_record(data[done * size : (done + 1) * size])
                lu.position += 1
        _early_warning(lu)
    except CheckCondition as cc:
        failed = lu.check_condition(cc)
        failed.data_out_used = result.data_out_used
        return failed
    return result


@_cmd(0x10, "WRITE FILEMARKS(6)", bytes([0x10, 0x01, 0xFF, 0xFF, 0xFF, 0x07]))
async def write_filemarks6(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if cdb[1] & 0xFE:  # WSMK: no setmarks
        raise _invalid(1, 1)
    count = _length24(cdb)
    lu.require_writable()
    await lu.io(_write_filemarks, lu, count)
    return ScsiResult()


def _write_filemarks(lu: TapeDevice, count: int) -> None:
    """Blocking (the LU's I/O thread): ``count`` marks at the head, then the sync."""
    if count:
        lu.begin_write()
        written = lu.image.append_filemarks(count)
        lu.position += written
        if written < count:
            raise _overflow(count - written)
    # File marks are where a drive empties its buffer to the medium (IMMED only lets the
    # command return first; this one returns after).
    lu.image.flush()
    _early_warning(lu)


@_cmd(0x19, "ERASE(6)", bytes([0x19, 0x03, 0, 0, 0, 0x07]))
async def erase6(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    """Short or long, erasing means end of data here: everything from the head on goes."""
    if cmd.cdb[1] & 0xFC:
        raise _invalid(1)
    lu.require_writable()
    await lu.io(_erase, lu)
    return ScsiResult()


def _erase(lu: TapeDevice) -> None:
    lu.begin_write()
    lu.image.flush()


# -- positioning -------------------------------------------------------------------------------
@_cmd(0x01, "REWIND", bytes([0x01, 0x01, 0, 0, 0, 0x07]))
async def rewind(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    if cmd.cdb[1] & 0xFE:
        raise _invalid(1)
    lu.require_medium()
    await lu.io(lu.image.flush)
    lu.position = 0
    return ScsiResult()


@_cmd(0x11, "SPACE(6)", bytes([0x11, 0x0F, 0xFF, 0xFF, 0xFF, 0x07]))
async def space6(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    code = cdb[1] & 0x0F
    if cdb[1] & 0xF0 or code not in (SPACE_BLOCKS, SPACE_FILEMARKS, SPACE_END_OF_DATA):
        raise _invalid(1, 3)
    count = int.from_bytes(cdb[2:5], "big", signed=True)
    lu.require_medium()
    if code == SPACE_END_OF_DATA:
        lu.position = len(lu.image)
    elif count > 0:
        (_space_blocks_forward if code == SPACE_BLOCKS else _space_marks_forward)(lu, count)
    elif count < 0:
        (_space_blocks_back if code == SPACE_BLOCKS else _space_marks_back)(lu, -count)
    return ScsiResult()


def _at_beginning(lu: TapeDevice, residue: int) -> CheckCondition:
    lu.position = 0
    return CheckCondition(
        Reason.BEGINNING_OF_PARTITION_MEDIUM_DETECTED, information=residue, eom=True
    )


def _space_blocks_forward(lu: TapeDevice, count: int) -> None:
    image, pos = lu.image, lu.position
    mark = image.next_filemark(pos)
    if mark is not None and mark < pos + count:
        lu.position = mark + 1  # stopped on the far side of the mark
        raise CheckCondition(
            Reason.FILEMARK_DETECTED, information=count - (mark - pos), filemark=True
        )
    if pos + count > len(image):
        lu.position = len(image)
        raise CheckCondition(Reason.END_OF_DATA_DETECTED, information=count - (len(image) - pos))
    lu.position = pos + count


def _space_blocks_back(lu: TapeDevice, count: int) -> None:
    pos = lu.position
    mark = lu.image.previous_filemark(pos)
    first = 0 if mark is None else mark + 1
    if pos - count >= first:
        lu.position = pos - count
        return
    if mark is None:
        raise _at_beginning(lu, count - pos)
    lu.position = mark  # stopped on the near (BOP) side of the mark
    raise CheckCondition(Reason.FILEMARK_DETECTED, information=count - (pos - first), filemark=True)


def _space_marks_forward(lu: TapeDevice, count: int) -> None:
    image = lu.image
    before = image.filemarks_before(lu.position)
    wanted = before + count - 1  # the file mark (0-based) to stop past
    if wanted < image.filemark_count():
        lu.position = image.filemark_index(wanted) + 1
        return
    lu.position = len(image)
    raise CheckCondition(
        Reason.END_OF_DATA_DETECTED, information=count - (image.filemark_count() - before)
    )


def _space_marks_back(lu: TapeDevice, count: int) -> None:
    before = lu.image.filemarks_before(lu.position)
    if before >= count:
        lu.position = lu.image.filemark_index(before - count)
        return
    raise _at_beginning(lu, count - before)


async def _locate(lu: TapeDevice, target: int) -> ScsiResult:
    lu.require_medium()
    await lu.io(lu.image.flush)
    if target > len(lu.image):
        lu.position = len(lu.image)
        raise CheckCondition(Reason.END_OF_DATA_DETECTED)
    lu.position = target
    return ScsiResult()


@_cmd(0x2B, "LOCATE(10)", bytes([0x2B, 0x07, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0x07]))
async def locate10(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if cdb[1] & 0xF8:
        raise _invalid(1)
    if cdb[1] & 0x02 and cdb[8]:  # CP: only partition 0 exists
        raise _invalid(8)
    return await _locate(lu, int.from_bytes(cdb[3:7], "big"))


LOCATE_OBJECT, LOCATE_FILE, LOCATE_END_OF_DATA = 0, 1, 3


@_cmd(0x92, "LOCATE(16)", bytes([0x92, 0x3B, 0, 0xFF, *b"\xff" * 8, 0, 0, 0, 0x07]))
async def locate16(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    dest = (cdb[1] >> 3) & 0x07
    if cdb[1] & 0xC4 or dest not in (LOCATE_OBJECT, LOCATE_FILE, LOCATE_END_OF_DATA):
        raise _invalid(1, 5)
    if cdb[1] & 0x02 and cdb[3]:
        raise _invalid(3)
    target = int.from_bytes(cdb[4:12], "big")
    lu.require_medium()
    image = lu.image
    if dest == LOCATE_END_OF_DATA:
        target = len(image)
    elif dest == LOCATE_FILE and target:
        # File N starts just past file mark N-1; a file past the last mark is past EOD.
        marks = image.filemark_count()
        target = image.filemark_index(target - 1) + 1 if target <= marks else len(image) + 1
    return await _locate(lu, target)


_SHORT_POSITION = struct.Struct(">BBxxIIxBBBI")  # 20 bytes
_LONG_POSITION = struct.Struct(">BxxxIQQ8x")  # 32 bytes
BOP, EOP = 0x80, 0x40


@_cmd(0x34, "READ POSITION", bytes([0x34, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07]))
async def read_position(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    """Short form (service actions 00h/01h) and long form (06h); nothing is ever held in
    a buffer, so the buffer counts are zero and known."""
    service_action = cmd.cdb[1] & 0x1F
    lu.require_medium()
    pos = lu.position
    flags = (BOP if pos == 0 else 0) | (EOP if lu.at_early_warning else 0)
    if service_action in (0x00, 0x01):
        data = _SHORT_POSITION.pack(flags, 0, pos, pos, 0, 0, 0, 0)
    elif service_action == 0x06:
        data = _LONG_POSITION.pack(flags, 0, pos, lu.image.filemarks_before(pos))
    else:
        raise _invalid(1, 4)
    return ScsiResult(data=data)


# -- medium -----------------------------------------------------------------------------------
@_cmd(0x1B, "LOAD UNLOAD", bytes([0x1B, 0x01, 0, 0, 0x0F, 0x07]))
async def load_unload(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    """LOAD puts the head at the beginning; UNLOAD (refused while removal is prevented)
    writes everything out and leaves the drive without a medium until the next LOAD."""
    cdb = cmd.cdb
    if cdb[1] & 0xFE or cdb[4] & 0xF0:
        raise _invalid(1 if cdb[1] & 0xFE else 4)
    if cdb[4] & 0x08:  # HOLD: keep the medium in the drive, position at BOP either way
        lu.require_medium()
    elif cdb[4] & 0x01:
        if not lu.has_cartridge:  # an empty library drive: nothing to load
            raise CheckCondition(Reason.MEDIUM_NOT_PRESENT)
        lu.loaded = True
    else:
        if lu.removal_prevented:
            raise CheckCondition(Reason.MEDIUM_REMOVAL_PREVENTED)
        lu.loaded = False
    await lu.io(lu.image.flush)
    lu.position = 0
    return ScsiResult()


@_cmd(0x1E, "PREVENT ALLOW MEDIUM REMOVAL", bytes([0x1E, 0, 0, 0, 0x03, 0x07]))
async def prevent_allow_medium_removal(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    prevent = cmd.cdb[4] & 0x03
    if prevent > 1:  # 10b/11b are the obsolete medium changer values
        raise _invalid(4, 1)
    lu.removal_prevented = bool(prevent)
    return ScsiResult()


_DENSITY = struct.Struct(">BBBxx3sHHI8s8s20s")  # 52 bytes
WRTOK, DEFLT = 0x80, 0x20


@_cmd(0x44, "REPORT DENSITY SUPPORT", bytes([0x44, 0x03, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07]))
async def report_density_support(lu: TapeDevice, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if cdb[1] & 0xFC:
        raise _invalid(1)
    allocation = int.from_bytes(cdb[7:9], "big")
    lu.require_medium()
    if cdb[1] & 0x02:  # MEDIUM TYPE: there are no medium type descriptors to give
        body = b""
    else:
        capacity_mb = lu.image.capacity // 1_000_000
        body = _DENSITY.pack(
            DENSITY_CODE,
            DENSITY_CODE,
            WRTOK | DEFLT,
            bytes(3),  # bits per mm: not a physical medium
            0,
            1,
            capacity_mb & 0xFFFFFFFF,
            b"TARGETD ",
            DENSITY_NAME.encode().ljust(8),
            b"targetd tape image".ljust(20),
        )
    data = (len(body) + 2).to_bytes(2, "big") + bytes(2) + body
    return ScsiResult(data=data[:allocation])


SSC_TABLE = OpcodeTable("ssc", SPC_TABLE)
SSC_TABLE.extend(_SSC_ONLY)
