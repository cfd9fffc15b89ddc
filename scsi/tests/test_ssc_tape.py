"""SSC commands on a TapeDevice over a temp image: reads and writes in variable and fixed
mode, file marks, SPACE, LOCATE, READ POSITION, early warning and a full medium, with the
exact sense bytes (key, FILEMARK/EOM/ILI, INFORMATION) Linux st reads, and the image left
whole after every refused command."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backing.tape_image import ENTRY_SIZE, TapeImage, create
from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import Identity
from scsi.tape_device import TapeDevice

NEXUS = Nexus("iqn.2026-11.org.test:i,i,0x1")
NO_SENSE, BLANK_CHECK, ILLEGAL_REQUEST, VOLUME_OVERFLOW = 0x0, 0x8, 0x5, 0xD
FM, EOM, ILI = 0x80, 0x40, 0x20


def make_tape(tmp_path: Path, capacity: int = 1 << 20, early_warning: int = 64 << 10) -> TapeDevice:
    path = tmp_path / "tape.img"
    create(path, capacity, early_warning=early_warning)
    return TapeDevice(Identity("test/tape"), TapeImage(path))


def run(lu: TapeDevice, cdb: bytes, data: bytes | None = None) -> ScsiResult:
    cmd = ScsiCommand(
        cdb, 0, NEXUS, data_out=None if data is None else memoryview(data), data_in_length=1 << 24
    )
    return asyncio.run(lu.execute(cmd))


def u24(n: int) -> bytes:
    return (n & 0xFFFFFF).to_bytes(3, "big")


def write(lu: TapeDevice, data: bytes, *, fixed_blocks: int | None = None) -> ScsiResult:
    if fixed_blocks is None:
        return run(lu, bytes([0x0A, 0]) + u24(len(data)) + b"\0", data)
    return run(lu, bytes([0x0A, 1]) + u24(fixed_blocks) + b"\0", data)


def read(lu: TapeDevice, length: int, *, fixed: bool = False, sili: bool = False) -> ScsiResult:
    return run(lu, bytes([0x08, (1 if fixed else 0) | (2 if sili else 0)]) + u24(length) + b"\0")


def weof(lu: TapeDevice, count: int = 1) -> ScsiResult:
    return run(lu, bytes([0x10, 0]) + u24(count) + b"\0")


def space(lu: TapeDevice, code: int, count: int) -> ScsiResult:
    return run(lu, bytes([0x11, code]) + u24(count) + b"\0")


def rewind(lu: TapeDevice) -> ScsiResult:
    return run(lu, bytes([0x01, 0, 0, 0, 0, 0]))


def sense(result: ScsiResult) -> tuple[int, int, int, int, int | None]:
    """(sense key, FILEMARK|EOM|ILI bits, ASC, ASCQ, INFORMATION if VALID)."""
    assert result.status == Status.CHECK_CONDITION, result
    s = result.sense
    assert s is not None and s[0] & 0x7F == 0x70
    info = int.from_bytes(s[3:7], "big", signed=True) if s[0] & 0x80 else None
    return s[2] & 0x0F, s[2] & 0xE0, s[12], s[13], info


def key_asc(result: ScsiResult) -> tuple[int, int]:
    key, _, asc, _, _ = sense(result)
    return key, asc


def good(result: ScsiResult) -> ScsiResult:
    assert result.status == Status.GOOD, result.sense
    return result


def populate(lu: TapeDevice) -> None:
    """file 0: records a(10) b(20); file 1: c(30); file 2: empty; then EOD."""
    for rec in (b"a" * 10, b"b" * 20):
        good(write(lu, rec))
    good(weof(lu))
    good(write(lu, b"c" * 30))
    good(weof(lu, 2))
    good(rewind(lu))


def test_inquiry_is_a_removable_tape(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    data = good(run(lu, bytes([0x12, 0, 0, 0, 96, 0]))).data
    assert data is not None and data[0] == 0x01 and data[1] == 0x80
    # SAM-5, iSCSI, SPC-4, SSC-3 (0400h; 0300h would claim SPC-3, as sg_inq and iscsi-inq show)
    assert bytes(data[58:66]) == bytes.fromhex("00a0 0960 0460 0400")


def test_variable_records_and_filemarks_read_back(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    populate(lu)
    assert good(read(lu, 10)).data == b"a" * 10
    assert good(read(lu, 20)).data == b"b" * 20
    # The file mark: NO SENSE, FILEMARK, 00/01, the whole request as residue; head past it.
    assert sense(read(lu, 100)) == (NO_SENSE, FM, 0x00, 0x01, 100)
    assert lu.position == 3
    assert good(read(lu, 30)).data == b"c" * 30
    assert sense(read(lu, 5))[:2] == (NO_SENSE, FM)
    assert sense(read(lu, 5))[:2] == (NO_SENSE, FM)  # the empty file 2
    # Past the last mark: BLANK CHECK, END-OF-DATA DETECTED, and nothing moves.
    assert sense(read(lu, 7)) == (BLANK_CHECK, 0, 0x00, 0x05, 7)
    assert sense(read(lu, 7)) == (BLANK_CHECK, 0, 0x00, 0x05, 7)
    assert lu.position == 6 == len(lu.image)


def test_short_record_sets_ili_unless_sili(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    populate(lu)
    result = read(lu, 64)  # a 10-byte record into a 64-byte buffer
    assert sense(result) == (NO_SENSE, ILI, 0, 0, 54)
    assert result.data == b"a" * 10
    result = read(lu, 64, sili=True)
    assert good(result).data == b"b" * 20


def test_long_record_is_cut_with_negative_residue(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    populate(lu)
    result = read(lu, 4, sili=True)  # SILI does not hide an overlength record
    assert sense(result) == (NO_SENSE, ILI, 0, 0, 4 - 10)
    assert result.data == b"aaaa"
    assert lu.position == 1  # past the record all the same
    assert result.sense is not None and result.sense[3:7] == (-6 & 0xFFFFFFFF).to_bytes(4, "big")


def test_fixed_mode_round_trip_and_wrong_block_size(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    # FIXED=1 while in variable mode: ILLEGAL REQUEST, INVALID FIELD IN CDB.
    assert key_asc(write(lu, bytes(512), fixed_blocks=1)) == (ILLEGAL_REQUEST, 0x24)
    good(run(lu, bytes([0x15, 0x10, 0, 0, 12, 0]), bytes([0, 0, 0, 8, 0x80, 0, 0, 0, 0, 0, 2, 0])))
    assert lu.block_size == 512
    mode = good(run(lu, bytes([0x1A, 0, 0, 0, 12, 0]))).data
    assert mode is not None and mode[3] == 8 and mode[4] == 0x80 and mode[9:12] == u24(512)
    blocks = bytes(range(256)) * 6
    good(write(lu, blocks, fixed_blocks=3))
    good(write(lu, b"odd" * 100))  # FIXED=0 in fixed mode: one variable 300-byte record
    good(write(lu, bytes(512), fixed_blocks=1))
    good(rewind(lu))
    assert good(read(lu, 2, fixed=True)).data == blocks[:1024]
    # The third block is fine, the 300-byte record is not: ILI, residue in blocks.
    result = read(lu, 3, fixed=True)
    assert sense(result) == (NO_SENSE, ILI, 0, 0, 2)
    assert result.data == blocks[1024:]
    assert lu.position == 4
    assert good(read(lu, 1, fixed=True)).data == bytes(512)
    assert key_asc(read(lu, 1, fixed=True, sili=True)) == (ILLEGAL_REQUEST, 0x24)


def test_fixed_read_stops_at_filemark_with_block_residue(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    lu.block_size = 4
    good(write(lu, b"1111222233334444", fixed_blocks=4))
    good(weof(lu))
    good(rewind(lu))
    result = read(lu, 6, fixed=True)
    assert sense(result) == (NO_SENSE, FM, 0, 1, 2)
    assert result.data == b"1111222233334444"
    result = read(lu, 3, fixed=True)
    assert sense(result) == (BLANK_CHECK, 0, 0, 5, 3) and result.data == b""


def test_oversized_record_refused_and_image_untouched(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    populate(lu)
    size = lu.image.path.stat().st_size
    limits = good(run(lu, bytes([0x05, 0, 0, 0, 0, 0]))).data
    assert limits == bytes([0, 0x80, 0, 0, 0, 1])  # max 8 MiB, min 1
    too_big = (8 << 20) + 1
    result = run(lu, bytes([0x0A, 0]) + u24(too_big) + b"\0", bytes(too_big))
    assert key_asc(result) == (ILLEGAL_REQUEST, 0x24)
    assert result.sense is not None and result.sense[15:18] == bytes([0xC0, 0, 2])
    assert lu.image.path.stat().st_size == size and len(lu.image) == 6 and lu.position == 0


def test_write_in_the_middle_makes_a_new_end_of_data(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    populate(lu)
    good(space(lu, 1, 1))  # to file 1
    good(write(lu, b"new"))
    assert len(lu.image) == 4
    good(rewind(lu))
    good(space(lu, 1, 1))
    assert good(read(lu, 3)).data == b"new"
    assert sense(read(lu, 3))[:4] == (BLANK_CHECK, 0, 0, 5)


def test_space_blocks_forward_and_back(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    populate(lu)  # a b FM c FM FM
    good(space(lu, 0, 1))
    assert lu.position == 1
    # Forward over the mark: stop past it, FILEMARK, residue = not spaced.
    assert sense(space(lu, 0, 5)) == (NO_SENSE, FM, 0, 1, 4)
    assert lu.position == 3
    # Backward into the mark: stop on its BOP side.
    assert sense(space(lu, 0, -2)) == (NO_SENSE, FM, 0, 1, 2)
    assert lu.position == 2
    good(space(lu, 0, -2))
    assert lu.position == 0
    # Before the beginning: NO SENSE, EOM, BEGINNING-OF-PARTITION/MEDIUM DETECTED.
    assert sense(space(lu, 0, -1)) == (NO_SENSE, EOM, 0, 4, 1)
    assert lu.position == 0
    good(space(lu, 1, 3))
    assert sense(space(lu, 0, 2)) == (BLANK_CHECK, 0, 0, 5, 2)
    assert lu.position == 6


def test_space_filemarks_and_end_of_data(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    populate(lu)
    good(space(lu, 1, 2))
    assert lu.position == 5
    good(space(lu, 1, -1))
    assert lu.position == 4  # BOP side of mark 2
    assert sense(space(lu, 1, 5)) == (BLANK_CHECK, 0, 0, 5, 3)
    assert lu.position == 6
    assert sense(space(lu, 1, -4)) == (NO_SENSE, EOM, 0, 4, 1)
    assert lu.position == 0
    good(space(lu, 3, 0))
    assert lu.position == 6
    assert key_asc(space(lu, 2, 1)) == (ILLEGAL_REQUEST, 0x24)  # sequential marks
    good(space(lu, 0, 0))


def test_read_position_and_locate(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    populate(lu)
    short = good(run(lu, bytes([0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0]))).data
    assert short == bytes([0x80, 0, 0, 0]) + bytes(16)
    good(run(lu, bytes([0x2B, 0, 0, 0, 0, 0, 4, 0, 0, 0])))
    assert lu.position == 4
    short = good(run(lu, bytes([0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0]))).data
    assert short == bytes(4) + (4).to_bytes(4, "big") * 2 + bytes(8)
    long = good(run(lu, bytes([0x34, 6, 0, 0, 0, 0, 0, 0, 0, 0]))).data
    assert long == bytes(8) + (4).to_bytes(8, "big") + (1).to_bytes(8, "big") + bytes(8)
    # Past EOD: BLANK CHECK at EOD.
    assert sense(run(lu, bytes([0x2B, 0, 0, 0, 0, 0, 9, 0, 0, 0])))[:4] == (BLANK_CHECK, 0, 0, 5)
    assert lu.position == 6
    # LOCATE(16) to file 1, and to EOD.
    good(run(lu, bytes([0x92, 1 << 3, 0, 0]) + (1).to_bytes(8, "big") + bytes(4)))
    assert lu.position == 3
    good(run(lu, bytes([0x92, 3 << 3, 0, 0]) + bytes(12)))
    assert lu.position == 6


def test_early_warning_then_full_medium(tmp_path: Path) -> None:
    lu = make_tape(tmp_path, capacity=64 << 10, early_warning=8 << 10)
    record = bytes(4096 - ENTRY_SIZE)
    for _ in range(13):
        good(write(lu, record))
    # Inside the early-warning zone: written, then NO SENSE + EOM, 00/02, residue 0.
    assert sense(write(lu, record)) == (NO_SENSE, EOM, 0, 2, 0)
    assert sense(write(lu, record)) == (NO_SENSE, EOM, 0, 2, 0)
    assert len(lu.image) == 15
    rs = good(run(lu, bytes([0x03, 0, 0, 0, 18, 0]))).data
    assert rs is not None and rs[2] == EOM and rs[12:14] == bytes([0, 2])
    assert sense(write(lu, record)) == (NO_SENSE, EOM, 0, 2, 0)
    # Full: VOLUME OVERFLOW, EOM, the whole request unwritten, the image as it was.
    size = lu.image.path.stat().st_size
    assert sense(write(lu, b"x")) == (VOLUME_OVERFLOW, EOM, 0, 2, 1)
    assert sense(weof(lu, 2)) == (VOLUME_OVERFLOW, EOM, 0, 2, 2)
    assert lu.image.path.stat().st_size == size and len(lu.image) == 16
    lu.image.close()
    reopened = TapeImage(lu.image.path)
    assert len(reopened) == 16 and reopened.recovery.cut_bytes == 0


def test_fixed_write_partly_fits(tmp_path: Path) -> None:
    lu = make_tape(tmp_path, capacity=64 << 10, early_warning=1024)
    lu.block_size = 4096 - ENTRY_SIZE
    good(write(lu, bytes(lu.block_size * 14), fixed_blocks=14))
    result = write(lu, bytes(lu.block_size * 5), fixed_blocks=5)
    assert sense(result) == (VOLUME_OVERFLOW, EOM, 0, 2, 3)
    assert len(lu.image) == 16


def test_erase_and_mode_pages(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    populate(lu)
    good(space(lu, 1, 1))
    good(run(lu, bytes([0x19, 1, 0, 0, 0, 0])))
    assert len(lu.image) == 3
    page = good(run(lu, bytes([0x1A, 0x08, 0x10, 0, 255, 0]))).data
    assert page is not None and page[3] == 0 and page[4:6] == bytes([0x10, 0x0E])
    assert page[2] == 0x10  # BUFFERED MODE 1, not write protected
    density = good(run(lu, bytes([0x44, 0, 0, 0, 0, 0, 0, 0, 255, 0]))).data
    assert density is not None and density[:2] == (54).to_bytes(2, "big")
    assert density[4] == 0x80 and density[6] == 0xA0


def test_data_compression_page_says_no_compression(tmp_path: Path) -> None:
    """tapeinfo reads page 0Fh for its compression lines, then the header for buffered
    mode and the block descriptor for the block size."""
    lu = make_tape(tmp_path)
    data = good(run(lu, bytes([0x1A, 0, 0x0F, 0, 255, 0]))).data
    assert data is not None and data[2] == 0x10 and data[3] == 8
    assert bytes(data[4:12]) == bytes([0x80, 0, 0, 0, 0, 0, 0, 0])  # density, variable
    assert bytes(data[12:28]) == bytes([0x0F, 0x0E]) + bytes(14)  # DCE, DCC, DDE all 0
    changeable = good(run(lu, bytes([0x1A, 0x08, 0x4F, 0, 255, 0]))).data
    assert changeable is not None and bytes(changeable[4:20]) == bytes([0x0F, 0x0E]) + bytes(14)
    # mt compression 0 (what st sends) is accepted; turning compression on is refused
    select = bytes([0, 0, 0x10, 0]) + bytes([0x0F, 0x0E]) + bytes(14)
    good(run(lu, bytes([0x15, 0x10, 0, 0, len(select), 0]), select))
    on = bytearray(select)
    on[6] = 0x80
    result = run(lu, bytes([0x15, 0x10, 0, 0, len(on), 0]), bytes(on))
    assert key_asc(result) == (ILLEGAL_REQUEST, 0x26)
    every = good(run(lu, bytes([0x1A, 0x08, 0x3F, 0, 255, 0]))).data
    assert every is not None and b"\x0f\x0e" in bytes(every) and b"\x10\x0e" in bytes(every)


def test_unload_prevented_then_not_ready_until_load(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    good(run(lu, bytes([0x1E, 0, 0, 0, 1, 0])))
    assert key_asc(run(lu, bytes([0x1B, 0, 0, 0, 0, 0]))) == (ILLEGAL_REQUEST, 0x53)
    good(run(lu, bytes([0x1E, 0, 0, 0, 0, 0])))
    good(run(lu, bytes([0x1B, 0, 0, 0, 0, 0])))
    assert key_asc(run(lu, bytes(6))) == (0x2, 0x3A)  # TEST UNIT READY: no medium
    assert key_asc(read(lu, 10)) == (0x2, 0x3A)
    good(run(lu, bytes([0x1B, 0, 0, 0, 1, 0])))
    good(run(lu, bytes(6)))


@pytest.mark.parametrize(
    "cdb",
    [
        bytes([0x08, 0x04, 0, 0, 1, 0]),  # READ(6) reserved bit
        bytes([0x10, 0x02, 0, 0, 1, 0]),  # WRITE FILEMARKS with WSMK
        bytes([0x34, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]),  # READ POSITION extended form
        bytes([0x92, 2 << 3, 0, 0]) + bytes(12),  # LOCATE(16) to a setmark
        bytes([0x05, 1, 0, 0, 0, 0]),  # READ BLOCK LIMITS with MLOC
    ],
)
def test_bad_fields_are_invalid_field_in_cdb(tmp_path: Path, cdb: bytes) -> None:
    lu = make_tape(tmp_path)
    assert key_asc(run(lu, cdb)) == (ILLEGAL_REQUEST, 0x24)


def test_mode_select_refuses_unknown_density_and_huge_blocks(tmp_path: Path) -> None:
    lu = make_tape(tmp_path)
    for descriptor in (bytes([0x42, 0, 0, 0, 0, 0, 2, 0]), bytes([0, 0, 0, 0, 0, 0x81, 0, 0])):
        result = run(lu, bytes([0x15, 0x10, 0, 0, 12, 0]), bytes([0, 0, 0, 8]) + descriptor)
        assert key_asc(result) == (ILLEGAL_REQUEST, 0x26)
    assert lu.block_size == 0
