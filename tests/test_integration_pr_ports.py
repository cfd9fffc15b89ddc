"""SPEC_I_PT and ALL_TG_PT against a real daemon with two target ports (two portals, TPGT 1
and 2) on one file LUN: an initiator registers itself through every port and, by
TransportID, a second initiator that has not logged in yet; both hold through either port,
an unregistered initiator meets RESERVATION CONFLICT, READ FULL STATUS shows each
registration's scope, and with APTPL all of it survives a restart (docs/operations.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from raw_initiator import RawInitiator
from test_integration_alua import TwoPortalDaemon

from scsi.sense import parse_sense
from scsi.transport_id import TransportId

IQN = "iqn.2026-11.org.targetd.test:prports"
X = "iqn.2026-11.org.test:x"
Y = "iqn.2026-11.org.test:y"
Z = "iqn.2026-11.org.test:z"
ISID = "400000001234"  # raw_initiator's
GOOD, CHECK_CONDITION, RESERVATION_CONFLICT = 0x00, 0x02, 0x18
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])
READ_KEYS = bytes([0x5E, 0x00, 0, 0, 0, 0, 0, 1, 0, 0])
READ_FULL_STATUS = bytes([0x5E, 0x03, 0, 0, 0, 0, 0, 4, 0, 0])
WERO = 0x5  # WRITE EXCLUSIVE - REGISTRANTS ONLY
SPEC_I_PT, ALL_TG_PT, APTPL = 0x08, 0x04, 0x01


@pytest.fixture
def two_ports(tmp_path: Path) -> Iterator[tuple[TwoPortalDaemon, int, int]]:
    p1, p2 = free_port(), free_port()
    path = tmp_path / "targetd.toml"
    path.write_text(f"""
[[portal]]
listen = "127.0.0.1:{p1}"
tpgt = 1
[[portal]]
listen = "127.0.0.1:{p2}"
tpgt = 2
[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
size = "8MiB"
""")
    daemon = TwoPortalDaemon(p1, tmp_path / "state", path, IQN, tmp_path / "targetd.log")
    daemon.start()
    yield daemon, p1, p2
    daemon.stop()


def login(port: int, name: str) -> RawInitiator:
    ini = RawInitiator(port, name=name)
    assert ini.login(IQN).bhs[36:38] == b"\0\0"
    ini.clear_unit_attentions()
    return ini


def prout(ini: RawInitiator, action: int, key: int, sa_key: int, *, type_: int = 0,
          flags: int = 0, tids: bytes = b"") -> tuple[int, bytes]:  # fmt: skip
    params = key.to_bytes(8, "big") + sa_key.to_bytes(8, "big")
    params += bytes([0, 0, 0, 0, flags, 0, 0, 0])
    if flags & SPEC_I_PT:
        params += len(tids).to_bytes(4, "big") + tids
    cdb = bytes([0x5F, action, type_, 0, 0]) + len(params).to_bytes(4, "big") + bytes(1)
    status, _, sense = ini.command(cdb, data=params)
    return status, sense


def full_status(ini: RawInitiator) -> list[tuple[int, int, int, bytes]]:
    """(key, flags byte, relative target port, TransportID) per descriptor."""
    status, data, _ = ini.command(READ_FULL_STATUS, read=1024)
    assert status == GOOD
    out, at = [], 8
    while at < 8 + int.from_bytes(data[4:8], "big"):
        length = int.from_bytes(data[at + 20 : at + 24], "big")
        out.append((int.from_bytes(data[at : at + 8], "big"), data[at + 12],
                    int.from_bytes(data[at + 18 : at + 20], "big"),
                    bytes(data[at + 24 : at + 24 + length])))  # fmt: skip
        at += 24 + length
    return out


def check_reserved(p1: int, p2: int) -> None:
    x1, x2, y2, z1 = login(p1, X), login(p2, X), login(p2, Y), login(p1, Z)
    assert x2.command(WRITE10, data=bytes(512))[0] == GOOD  # the holder, through port 2
    assert y2.command(WRITE10, data=bytes(512))[0] == GOOD  # a registrant
    assert z1.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    assert sorted(full_status(z1)) == sorted([
        (0xAB, 0x03, 0, TransportId(X, ISID).encode()),  # ALL_TG_PT, R_HOLDER
        (0xAB, 0x02, 0, TransportId(Y).encode()),  # ALL_TG_PT; Y's whole device
    ])  # fmt: skip
    for ini in (x1, x2, y2, z1):
        ini.close()


def test_spec_i_pt_and_all_tg_pt_register_ports_and_initiators_not_logged_in(
    two_ports: tuple[TwoPortalDaemon, int, int],
) -> None:
    daemon, p1, p2 = two_ports
    x1 = login(p1, X)
    # A bad TransportID: ILLEGAL REQUEST pointing at its PROTOCOL IDENTIFIER, nothing kept.
    bad = bytes([0x04]) + TransportId(Y).encode()[1:]
    status, sense = prout(x1, 0x00, 0, 0xAB, flags=SPEC_I_PT, tids=bad)
    assert status == CHECK_CONDITION and parse_sense(sense) == (5, 0x26, 0x00)
    assert sense[15:18] == bytes([0x8B, 0, 28])
    assert x1.command(READ_KEYS, read=64)[1][4:8] == bytes(4)
    # X through every port, and Y (not logged in anywhere yet) with it, with APTPL.
    flags = SPEC_I_PT | ALL_TG_PT | APTPL
    assert prout(x1, 0x00, 0, 0xAB, flags=flags, tids=TransportId(Y).encode())[0] == GOOD
    assert prout(x1, 0x01, 0xAB, 0, type_=WERO)[0] == GOOD  # RESERVE through port 1
    x1.close()
    check_reserved(p1, p2)
    daemon.restart()
    check_reserved(p1, p2)
