"""Pair operations honour the reservations of every LU they read or write, not only the
LU the command was sent to: two initiators against a real daemon (docs/pairs.md,
"Reservations"). H holds a persistent reservation; I tries to reach H's LU through a
pair operation sent to another LUN, and targetctl is refused the same unless --force."""

from __future__ import annotations

import json
import time

from conftest import Daemon, DaemonFactory
from pair_scsi import CREATE, RESYNC, SPLIT, BlockClient, pair_config, pair_out, write16

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd:pair-pr"
HOLDER = "iqn.2026-11.org.test:holder"
INTRUDER = "iqn.2026-11.org.test:intruder"
GOOD, RESERVATION_CONFLICT = 0x00, 0x18
WRITE_EXCLUSIVE, EXCLUSIVE_ACCESS = 0x1, 0x3
KEY = 0xABCD


def persistent_reserve_out(
    action: int, key: int, sa_key: int, type_: int = 0
) -> tuple[bytes, bytes]:
    cdb = bytes([0x5F, action, type_, 0, 0]) + (24).to_bytes(4, "big") + bytes(1)
    params = key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes(8)
    return cdb, params


def reserve(client: BlockClient, lun: int, type_: int) -> None:
    cdb, params = persistent_reserve_out(0x00, 0, KEY)  # REGISTER
    client.ok(cdb, lun=lun, data=params)
    cdb, params = persistent_reserve_out(0x01, KEY, 0, type_)  # RESERVE
    client.ok(cdb, lun=lun, data=params)


def two_initiators(factory: DaemonFactory) -> tuple[Daemon, BlockClient, BlockClient]:
    daemon = factory(pair_config(IQN, "0"))  # copies as fast as the disk goes
    holder = BlockClient(daemon.port, IQN, (0, 1, 2), name=HOLDER)
    intruder = BlockClient(daemon.port, IQN, (0, 1, 2), name=INTRUDER)
    return daemon, holder, intruder


def test_create_onto_a_write_exclusive_lun_is_a_reservation_conflict(
    targetd_factory: DaemonFactory,
) -> None:
    _, holder, intruder = two_initiators(targetd_factory)
    holder.write(1, 0, b"\x11" * MiB)
    intruder.write(0, 0, b"\xee" * MiB)
    reserve(holder, 1, WRITE_EXCLUSIVE)
    # The direct path was always refused ...
    status, _, _ = intruder.run(write16(0, 8), lun=1, data=bytes(4096))
    assert status == RESERVATION_CONFLICT
    # ... and so is the creation copy that would overwrite LUN 1, sent to LUN 0.
    status, _, sense = intruder.run(pair_out(CREATE, 0, 1, 2), lun=0, data=b"pp")
    assert (status, sense) == (RESERVATION_CONFLICT, None)
    time.sleep(1.0)  # on a daemon that let it through, the copy would be done by now
    assert holder.read(1, 0, MiB) == b"\x11" * MiB
    st = intruder.status(1)
    assert (st.source, st.target) == ("SIMPLEX", "SIMPLEX")
    # Through LUN 2, naming both LUNs explicitly: the same.
    status, _, _ = intruder.run(pair_out(CREATE, 0, 1), lun=2)
    assert status == RESERVATION_CONFLICT
    # The holder itself may.
    holder.create(0, 1, b"hp")
    holder.wait("DUPLEX")
    assert holder.read(1, 0, MiB) == b"\xee" * MiB


def test_split_and_resync_of_a_pair_whose_target_is_reserved(
    targetd_factory: DaemonFactory,
) -> None:
    _, holder, intruder = two_initiators(targetd_factory)
    intruder.write(0, 0, b"\xee" * MiB)
    intruder.create(0, 1, b"db")
    intruder.wait("DUPLEX")
    reserve(holder, 1, WRITE_EXCLUSIVE)
    # Addressed by the source LUN (0), but the split and resync write the target (1).
    assert intruder.run(pair_out(SPLIT, 0), lun=0)[0] == RESERVATION_CONFLICT
    assert intruder.status(0).source == "DUPLEX"
    holder.ok(pair_out(SPLIT, 0), lun=0)
    holder.wait("SPLIT")
    holder.write(1, 0, b"\x22" * MiB)  # the split target is the holder's to change
    assert intruder.run(pair_out(RESYNC, 0), lun=0)[0] == RESERVATION_CONFLICT
    time.sleep(0.5)
    assert intruder.status(0).source == "SPLIT"
    assert holder.read(1, 0, MiB) == b"\x22" * MiB
    holder.ok(pair_out(RESYNC, 0), lun=0)
    holder.wait("DUPLEX")
    assert holder.read(1, 0, MiB) == b"\xee" * MiB


def test_create_reading_an_exclusive_access_source_is_a_reservation_conflict(
    targetd_factory: DaemonFactory,
) -> None:
    _, holder, intruder = two_initiators(targetd_factory)
    holder.write(0, 0, b"\x33" * MiB)
    reserve(holder, 0, EXCLUSIVE_ACCESS)
    status, _, _ = intruder.run(pair_out(CREATE, 0, 1), lun=2)
    assert status == RESERVATION_CONFLICT
    assert intruder.read(1, 0, MiB) == bytes(MiB)


def test_targetctl_is_refused_by_a_reservation_unless_forced(
    targetd_factory: DaemonFactory,
) -> None:
    daemon, holder, _ = two_initiators(targetd_factory)
    holder.write(1, 0, b"\x11" * MiB)
    reserve(holder, 1, WRITE_EXCLUSIVE)
    done = daemon.targetctl("pair", "create", "db", "0", "1")
    assert done.returncode == 1
    assert done.stderr == (
        "targetctl: pair.create: LUN 1 is reserved by another initiator (--force overrides)\n"
    )
    assert holder.read(1, 0, MiB) == b"\x11" * MiB
    # The READ went out from LUN 1's file (sendfile), so the creation copy waits until the
    # initiator acknowledges it (docs/pairs.md). This test client reads its socket only
    # for its own commands, so it acknowledges now, as a real initiator answers the
    # target's ping at once.
    holder.ini.nop()
    done = daemon.targetctl("pair", "create", "db", "0", "1", "--force", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["target_lun"] == 1
    holder.wait("DUPLEX")
    assert holder.read(1, 0, MiB) == bytes(MiB)
