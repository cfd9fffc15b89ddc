"""EXTENDED COPY honours the reservations of the LUs it reads and writes, over the wire.

The copy acts on behalf of the I_T nexus that sent it (docs/xcopy.md, "Reservations"):
initiator H reserves an LU; initiator I, through another LUN of the same target, asks
the copy manager to write (or, under Exclusive Access, to read) that LU. The copy ends
with COPY ABORTED before a byte moves, and the reserved LU is unchanged. Before the fix
the reservation check looked only at the LUN the EXTENDED COPY was addressed to, and
the copy overwrote the reserved LU with GOOD.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Daemon, DaemonFactory
from raw_initiator import RawInitiator
from test_integration_xcopy import naa_of
from xcopy_lists import cscd, lid1, lid4, seg_b2b, seg_b2s, xcopy_cdb

CONFIG = """
[[target]]
name = "iqn.2026-11.org.targetd:res"
[[target.lun]]
lun = 0
path = "a.img"
size = "4MiB"
[[target.lun]]
lun = 1
path = "b.img"
size = "4MiB"
[[target.lun]]
lun = 2
kind = "tape"
path = "tape.img"
size = "16MiB"
"""
GOOD, CHECK, CONFLICT = 0x00, 0x02, 0x18
COPY_ABORTED = 0x0A
WRITE_EXCLUSIVE, EXCLUSIVE_ACCESS = 1, 3
TAPE = 2
KEY_H, KEY_I = 0xAB, 0xCD
BLOCKS = 64  # 32 KiB: one immediate-data write


def login(port: int, iqn: str, name: str) -> RawInitiator:
    ini = RawInitiator(port, name=name)
    assert ini.login(iqn).bhs[36] == 0
    for lun in (0, 1, TAPE):
        ini.clear_unit_attentions(lun)
    return ini


def prout(ini: RawInitiator, lun: int, action: int, key: int, sa_key: int, kind: int = 0) -> int:
    params = key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes(8)
    cdb = bytes([0x5F, action, kind, 0, 0, 0, 0, 0, 24, 0])
    return ini.command(cdb, lun=lun, data=params)[0]


def reserve_pr(ini: RawInitiator, lun: int, key: int, kind: int) -> None:
    assert prout(ini, lun, 0x00, 0, key) == GOOD  # REGISTER
    assert prout(ini, lun, 0x01, key, 0, kind) == GOOD  # RESERVE


def block_copy(ini: RawInitiator, via: int, src: int, dst: int) -> tuple[int, bytes]:
    """LID1, segment 02h: BLOCKS blocks from LUN ``src`` to LUN ``dst``, both named by
    NAA, the command addressed to LUN ``via``."""
    cscds = cscd(naa_of(ini, src), 0x00, 512) + cscd(naa_of(ini, dst), 0x00, 512)
    segment = seg_b2b(0, 1, BLOCKS, 0, 0)
    params = lid1(cscds, segment, list_id=7)
    cdb = xcopy_cdb(len(params))
    status, _, sense = ini.command(cdb, lun=via, data=params)
    return status, sense


def write10(ini: RawInitiator, lun: int, data: bytes) -> int:
    cdb = struct.pack(">BBIBHB", 0x2A, 0, 0, 0, len(data) // 512, 0)
    return ini.command(cdb, lun=lun, data=data)[0]


def read10(ini: RawInitiator, lun: int) -> bytes:
    cdb = struct.pack(">BBIBHB", 0x28, 0, 0, 0, BLOCKS, 0)
    status, data, _ = ini.command(cdb, lun=lun, read=BLOCKS * 512)
    assert status == GOOD
    return data


SOURCE = bytes([0x5A]) * (BLOCKS * 512)
KEPT = bytes([0xC3]) * (BLOCKS * 512)


def copy_aborted_before_any_byte(status: int, sense: bytes) -> None:
    assert status == CHECK, (status, sense.hex())
    # COPY ABORTED, 00/00: a copy target refused; segment 0, the whole segment left.
    assert (sense[2] & 0x0F, sense[12], sense[13]) == (COPY_ABORTED, 0x00, 0x00), sense.hex()
    assert sense[0] & 0x80 and int.from_bytes(sense[3:7], "big") == BLOCKS
    assert sense[10:12] == b"\0\0"


@pytest.fixture
def holder_and_other(targetd_factory: DaemonFactory) -> Iterator[tuple[RawInitiator, RawInitiator]]:
    """H, who takes the reservations, and I, whose copies they must stop, logged in to one
    daemon; LUN 0 holds SOURCE."""
    daemon = targetd_factory(CONFIG)
    with (
        login(daemon.port, daemon.iqn, "iqn.2026-11.org.test:h") as h,
        login(daemon.port, daemon.iqn, "iqn.2026-11.org.test:i") as i,
    ):
        assert write10(i, 0, SOURCE) == GOOD
        yield h, i


@pytest.mark.parametrize(
    ("reserved", "kind", "via"),
    [
        (1, WRITE_EXCLUSIVE, 0),  # the destination, Write Exclusive
        (1, EXCLUSIVE_ACCESS, 0),  # the destination, Exclusive Access
        (0, EXCLUSIVE_ACCESS, 1),  # the source, Exclusive Access: not even a read
    ],
    ids=["destination-write-exclusive", "destination-exclusive-access", "source-exclusive"],
)
def test_a_persistent_reservation_of_another_initiator_stops_the_copy(
    holder_and_other: tuple[RawInitiator, RawInitiator], reserved: int, kind: int, via: int
) -> None:
    h, i = holder_and_other
    assert write10(i, 1, KEPT) == GOOD
    reserve_pr(h, reserved, KEY_H, kind)
    if reserved == 1:  # I's own WRITE is refused: so must its copy be
        assert write10(i, 1, SOURCE) == CONFLICT
    copy_aborted_before_any_byte(*block_copy(i, via=via, src=0, dst=1))
    assert read10(h, 1) == KEPT  # not one byte written
    # The holder's own copy runs: it acts for the nexus that holds the reservation.
    assert block_copy(h, via=via, src=0, dst=1) == (GOOD, b"")
    assert read10(h, 1) == SOURCE


def test_a_write_exclusive_source_may_still_be_read(
    holder_and_other: tuple[RawInitiator, RawInitiator],
) -> None:
    """Write Exclusive lets every initiator read: a copy from the reserved LU runs."""
    h, i = holder_and_other
    reserve_pr(h, 0, KEY_H, WRITE_EXCLUSIVE)
    assert block_copy(i, via=1, src=0, dst=1) == (GOOD, b"")
    assert read10(i, 1) == SOURCE


def test_a_registrant_passes_a_registrants_only_reservation(
    holder_and_other: tuple[RawInitiator, RawInitiator],
) -> None:
    h, i = holder_and_other
    reserve_pr(h, 1, KEY_H, 5)  # Write Exclusive, Registrants Only
    copy_aborted_before_any_byte(*block_copy(i, via=0, src=0, dst=1))
    assert prout(i, 1, 0x00, 0, KEY_I) == GOOD  # I registers: it may write now
    assert block_copy(i, via=0, src=0, dst=1) == (GOOD, b"")
    assert read10(i, 1) == SOURCE


def test_reserve6_of_another_initiator_stops_the_copy(
    holder_and_other: tuple[RawInitiator, RawInitiator],
) -> None:
    h, i = holder_and_other
    assert write10(i, 1, KEPT) == GOOD
    assert h.command(bytes([0x16, 0, 0, 0, 0, 0]), lun=1)[0] == GOOD  # RESERVE(6)
    copy_aborted_before_any_byte(*block_copy(i, via=0, src=0, dst=1))
    assert read10(h, 1) == KEPT
    assert h.command(bytes([0x17, 0, 0, 0, 0, 0]), lun=1)[0] == GOOD  # RELEASE(6)
    assert block_copy(i, via=0, src=0, dst=1) == (GOOD, b"")
    assert read10(h, 1) == SOURCE


def test_a_backup_to_a_reserved_tape_writes_no_record(
    holder_and_other: tuple[RawInitiator, RawInitiator],
) -> None:
    h, i = holder_and_other
    reserve_pr(h, TAPE, KEY_H, WRITE_EXCLUSIVE)
    cscds = cscd(naa_of(i, 0), 0x00, 512) + cscd(naa_of(i, TAPE), 0x01)
    segment = seg_b2s(0, 1, BLOCKS * 512, BLOCKS, 0)
    params = lid1(cscds, segment, list_id=9)
    cdb = xcopy_cdb(len(params))
    status, _, sense = i.command(cdb, lun=0, data=params)
    copy_aborted_before_any_byte(status, sense)
    # READ POSITION: the tape is still at its beginning, with no record on it.
    status, position, _ = h.command(bytes([0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0]), lun=TAPE, read=20)
    assert status == GOOD and position[0] & 0x80 and position[4:8] == bytes(4)
    status, _, sense = h.command(bytes([0x08, 0, 0, 0x02, 0, 0]), lun=TAPE, read=512)
    assert status == CHECK and (sense[2] & 0x0F, sense[12], sense[13]) == (0x08, 0x00, 0x05)


# -- access revoked by a reload ----------------------------------------------------------------
HOST, KEEPER = "iqn.2026-11.org.test:host", "iqn.2026-11.org.test:keeper"


def acl_config(*allowed: str) -> str:
    return f"""
[[target]]
name = "iqn.2026-11.org.targetd:res"
allowed_initiators = {json.dumps(list(allowed))}
[[target.lun]]
lun = 0
path = "a.img"
size = "32MiB"
[[target.lun]]
lun = 1
path = "b.img"
size = "1MiB"
[[target.lun]]
lun = 2
kind = "tape"
path = "tape.img"
size = "128MiB"
"""


def copy_operations(daemon: Daemon) -> list[dict[str, Any]]:
    operations: list[dict[str, Any]] = daemon.targetctl_json("status")["copy_operations"]
    return operations


def test_a_copy_stops_when_a_reload_revokes_its_initiator(
    targetd_factory: DaemonFactory,
) -> None:
    """The initiator a backup runs for is taken off the ACL by SIGHUP: its commands fail
    from then on, and so does its copy, at its next record."""
    daemon = targetd_factory(acl_config(HOST, KEEPER))
    assert daemon.config is not None and daemon.proc is not None
    host = login(daemon.port, daemon.iqn, HOST)
    # 32 MiB as 65536 fixed 512-byte records: a copy of many small steps, still running
    # when the reload lands.
    cscds = cscd(naa_of(host, 0), 0x00, 512) + cscd(naa_of(host, TAPE), 0x01, 512, fixed=True)
    segments = [seg_b2s(0, 1, 8192, 8192, lba) for lba in range(0, 65536, 8192)]
    params = lid4(cscds, segments, list_id=5, immed=True)
    cdb = xcopy_cdb(len(params), 0x01)
    assert host.command(cdb, lun=0, data=params)[0] == GOOD
    deadline = time.monotonic() + 30
    while not any(op["bytes_done"] for op in copy_operations(daemon)):
        assert time.monotonic() < deadline, "the backup does not start"
        time.sleep(0.02)
    daemon.config.write_text(acl_config(KEEPER))
    os.kill(daemon.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "access revoked" not in daemon.stderr:
        assert time.monotonic() < deadline, daemon.stderr
        time.sleep(0.05)
    while True:
        (op,) = copy_operations(daemon)
        if op["state"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert op["state"] == "aborted", op
    assert op["bytes_done"] < op["bytes_total"], op
    moved = op["bytes_done"]
    time.sleep(0.5)  # and nothing moves any more
    (op,) = copy_operations(daemon)
    assert op["bytes_done"] == moved
    host.close()
