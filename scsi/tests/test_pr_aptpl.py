"""APTPL: persistent reservations kept in a file survive a new LU (a restart), are written
before the PROUT is acknowledged, and go when the last REGISTER turns APTPL off."""

from __future__ import annotations

import json
from pathlib import Path

from scsi.command import Status
from scsi.pr_file import PrFile
from scsi.reservations import PrType
from scsi.sense import parse_sense
from scsi.tests.test_spc_reservations import READ, WRITE, A, B, make_lu, prin, prout, run

APTPL = 0x01
REGISTER, RESERVE = 0x00, 0x01


def with_file(path: Path):
    lu = make_lu()
    lu.reservations.store = PrFile(path)
    return lu


def test_aptpl_register_and_reserve_survive_a_new_lu(tmp_path: Path) -> None:
    path = tmp_path / "r" / "lun0.json"
    lu = with_file(path)
    assert prout(lu, A, REGISTER, sa_key=0xA1, flags=APTPL).status == Status.GOOD
    assert path.exists()  # on disk before the command returned
    assert prout(lu, B, REGISTER, sa_key=0xB2).status == Status.GOOD
    assert prout(lu, A, RESERVE, key=0xA1, pr_type=PrType.WRITE_EXCLUSIVE).status == Status.GOOD
    # The last REGISTER (B's) had APTPL 0 ... so B registers again asking for APTPL.
    assert not path.exists()
    assert prout(lu, B, REGISTER, key=0xB2, sa_key=0xB3, flags=APTPL).status == Status.GOOD
    keys_before, reservation_before = prin(lu, A, 0), prin(lu, A, 1)

    again = with_file(path)
    assert again.reservations.store is not None
    assert again.reservations.store.load_into(again.reservations)
    assert prin(again, A, 0) == keys_before
    assert prin(again, A, 1) == reservation_before
    assert run(again, B, WRITE).status == Status.RESERVATION_CONFLICT
    assert run(again, B, READ).status == Status.GOOD
    assert run(again, A, WRITE).status == Status.GOOD
    caps = prin(again, A, 2)
    assert (caps[2] & 0x01, caps[3] & 0x01) == (1, 1)  # PTPL_C, PTPL_A


def test_capabilities_without_aptpl(tmp_path: Path) -> None:
    caps = prin(with_file(tmp_path / "x.json"), A, 2)
    assert (caps[2] & 0x01, caps[3] & 0x01) == (1, 0)
    caps = prin(make_lu(), A, 2)
    assert (caps[2] & 0x01, caps[3] & 0x01) == (0, 0)


def test_register_without_aptpl_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lun0.json"
    lu = with_file(path)
    prout(lu, A, REGISTER, sa_key=1, flags=APTPL)
    assert json.loads(path.read_text())["registrations"][0]["key"] == 1
    prout(lu, A, REGISTER, key=1, sa_key=2)
    assert not path.exists()
    fresh = with_file(path)
    assert fresh.reservations.store is not None
    assert not fresh.reservations.store.load_into(fresh.reservations)
    assert prin(fresh, A, 0)[4:8] == bytes(4)


def test_a_failed_write_undoes_the_change_and_fails_the_command(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    lu = with_file(blocker / "lun0.json")
    result = prout(lu, A, REGISTER, sa_key=7, flags=APTPL)
    assert result.status == Status.CHECK_CONDITION and result.sense is not None
    assert parse_sense(result.sense) == (5, 0x55, 0x04)  # INSUFFICIENT REGISTRATION RESOURCES
    assert lu.reservations.keys == {} and not lu.reservations.aptpl


def test_an_unreadable_file_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "lun0.json"
    path.write_text("{not json")
    lu = with_file(path)
    assert lu.reservations.store is not None
    assert not lu.reservations.store.load_into(lu.reservations)
    assert (tmp_path / "lun0.bad").read_text() == "{not json"
