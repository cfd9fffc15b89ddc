"""Control mode page SWP on a block LU: set by MODE SELECT, every writing command then gets
DATA PROTECT / SOFTWARE WRITE PROTECTED, reads keep working, MODE SENSE shows WP, and clearing
it makes the LU writable again. libiscsi's Sanitize.Readonly and ModeSense6.Control-SWP set
it from a second session and expect exactly this."""

from __future__ import annotations

from pathlib import Path

from test_sbc_support import cdb16, make_lu, read10, run, sense_of, write10
from test_spc_mode import CONTROL, select6, sense6

from scsi.command import Status
from scsi.logical_unit import Identity, LogicalUnit
from scsi.spc import SPC_TABLE

SOFTWARE_WRITE_PROTECTED = (0x07, 0x27, 0x02)
WRITE_PROTECTED = (0x07, 0x27, 0x00)


def set_swp(lu, on: bool) -> None:
    page = bytearray(CONTROL)
    page[4] = 0x08 if on else 0
    params = bytes(4) + page
    assert run(lu, select6(params), params).status == Status.GOOD


def test_swp_protects_the_medium_until_cleared(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    changeable = bytes(run(lu, sense6(0x0A, pc=1, dbd=True)).data)[4:]
    assert changeable[4] & 0x08
    assert run(lu, write10(0, 1), bytes(512)).status == Status.GOOD
    set_swp(lu, True)
    assert bytes(run(lu, sense6(0x0A, dbd=True)).data)[2] & 0x80  # header WP
    assert bytes(run(lu, sense6(0x0A, dbd=True)).data)[4 + 4] & 0x08
    assert sense_of(run(lu, write10(0, 1), bytes(512))) == SOFTWARE_WRITE_PROTECTED
    assert sense_of(run(lu, cdb16(0x8A, 0, 1), bytes(512))) == SOFTWARE_WRITE_PROTECTED
    unmap = bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0])
    params = (22).to_bytes(2, "big") + (16).to_bytes(2, "big") + bytes(4)
    params += (0).to_bytes(8, "big") + (1).to_bytes(4, "big") + bytes(4)
    assert sense_of(run(lu, unmap, params)) == SOFTWARE_WRITE_PROTECTED
    write_same = bytes([0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    assert sense_of(run(lu, write_same, bytes(512))) == SOFTWARE_WRITE_PROTECTED
    assert run(lu, read10(0, 1)).status == Status.GOOD
    set_swp(lu, False)
    assert run(lu, write10(0, 1), bytes(512)).status == Status.GOOD
    lu.close()


def test_configured_read_only_stays_write_protected(tmp_path: Path) -> None:
    lu = make_lu(tmp_path, read_only=True)
    set_swp(lu, True)
    set_swp(lu, False)
    assert sense_of(run(lu, write10(0, 1), bytes(512))) == WRITE_PROTECTED
    lu.close()


def test_swp_is_not_changeable_where_writes_do_not_honour_it() -> None:
    class Other(LogicalUnit):
        table = SPC_TABLE

    lu = Other(Identity("other"))
    changeable = bytes(run(lu, sense6(0x0A, pc=1, dbd=True)).data)[4:]
    assert changeable[4] == 0
