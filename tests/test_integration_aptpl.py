"""Persistent reservations against a real daemon (docs/operations.md, "Persistent
reservations"): a registration and reservation taken with APTPL hold after a clean restart
and after kill -9 (written before the PROUT was acknowledged), without APTPL a restart
forgets them; REGISTER AND MOVE; PREEMPT AND ABORT ends the preempted initiator's write."""

from __future__ import annotations

from conftest import Daemon, DaemonFactory
from raw_initiator import RawInitiator

from scsi.sense import parse_sense
from targetd.iscsi.pdu import Op, new_header, put_u32

IQN = "iqn.2026-11.org.targetd.test:aptpl"
CONFIG = f'[[target]]\nname = "{IQN}"\n[[target.lun]]\nlun = 0\nsize = "8MiB"\n'
HOLDER = "iqn.2026-11.org.test:holder"
OTHER = "iqn.2026-11.org.test:other"
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])
READ_KEYS = bytes([0x5E, 0x00, 0, 0, 0, 0, 0, 1, 0, 0])
READ_RESERVATION = bytes([0x5E, 0x01, 0, 0, 0, 0, 0, 1, 0, 0])
GOOD, RESERVATION_CONFLICT = 0x00, 0x18
WRITE_EXCLUSIVE = 0x1
KEY = 0x1234_5678_9ABC_DEF0


def prout(ini: RawInitiator, action: int, key: int, sa_key: int, type_: int = 0,
          aptpl: bool = False) -> int:  # fmt: skip
    cdb = bytes([0x5F, action, type_, 0, 0]) + (24).to_bytes(4, "big") + bytes(1)
    params = (
        key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes([0, 0, 0, 0, aptpl, 0, 0, 0])
    )
    return ini.command(cdb, data=params)[0]


def session(daemon: Daemon, name: str) -> RawInitiator:
    ini = RawInitiator(daemon.port, name=name)
    assert ini.login(IQN).bhs[36:38] == b"\0\0"
    ini.clear_unit_attentions()
    return ini


def assert_reserved_by_holder(daemon: Daemon) -> None:
    holder, other = session(daemon, HOLDER), session(daemon, OTHER)
    status, keys, _ = holder.command(READ_KEYS, read=256)
    assert (
        status == GOOD
        and keys[4:8] == (8).to_bytes(4, "big")
        and keys[8:16] == KEY.to_bytes(8, "big")
    )
    status, res, _ = other.command(READ_RESERVATION, read=256)
    assert status == GOOD and res[8:16] == KEY.to_bytes(8, "big") and res[21] == WRITE_EXCLUSIVE
    assert other.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    assert holder.command(WRITE10, data=bytes(512))[0] == GOOD
    holder.close()
    other.close()


def test_aptpl_reservation_survives_restart_and_kill_9(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    holder = session(daemon, HOLDER)
    assert prout(holder, 0x00, 0, KEY, aptpl=True) == GOOD  # REGISTER, APTPL
    assert prout(holder, 0x01, KEY, 0, WRITE_EXCLUSIVE) == GOOD  # RESERVE
    # kill -9 right after the acknowledgement: nothing later had a chance to write it.
    daemon.kill()
    daemon.start()
    assert "persistent reservations restored" in daemon.stderr
    assert_reserved_by_holder(daemon)
    daemon.restart()  # SIGTERM and start again
    assert_reserved_by_holder(daemon)


def test_without_aptpl_a_restart_forgets(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    holder = session(daemon, HOLDER)
    assert prout(holder, 0x00, 0, KEY) == GOOD
    assert prout(holder, 0x01, KEY, 0, WRITE_EXCLUSIVE) == GOOD
    holder.close()
    daemon.restart()
    other = session(daemon, OTHER)
    status, keys, _ = other.command(READ_KEYS, read=256)
    assert status == GOOD and keys[4:8] == bytes(4)
    assert other.command(WRITE10, data=bytes(512))[0] == GOOD


def register_and_move(ini: RawInitiator, key: int, sa_key: int, name: str, aptpl: bool) -> int:
    tid = name.encode() + b"\0"
    tid += bytes(-len(tid) % 4)
    tid = bytes([0x05, 0]) + len(tid).to_bytes(2, "big") + tid
    params = key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes([0, int(aptpl)])
    params += (1).to_bytes(2, "big") + len(tid).to_bytes(4, "big") + tid
    cdb = bytes([0x5F, 0x07, WRITE_EXCLUSIVE, 0, 0]) + len(params).to_bytes(4, "big") + bytes(1)
    return ini.command(cdb, data=params)[0]


def test_register_and_move_hands_the_reservation_over_and_it_persists(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(CONFIG)
    other = session(daemon, OTHER)
    holder = session(daemon, HOLDER)
    assert prout(holder, 0x00, 0, 0xAAAA) == GOOD
    assert prout(holder, 0x01, 0xAAAA, 0, WRITE_EXCLUSIVE) == GOOD
    assert other.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    # The holder moves the reservation to OTHER (registering it with KEY), with APTPL.
    assert register_and_move(holder, 0xAAAA, KEY, OTHER, aptpl=True) == GOOD
    assert other.command(WRITE10, data=bytes(512))[0] == GOOD
    assert holder.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT
    holder.close()
    other.close()
    daemon.restart()
    other, holder = session(daemon, OTHER), session(daemon, HOLDER)
    status, res, _ = holder.command(READ_RESERVATION, read=256)
    assert status == GOOD and res[8:16] == KEY.to_bytes(8, "big") and res[21] == WRITE_EXCLUSIVE
    assert other.command(WRITE10, data=bytes(512))[0] == GOOD
    assert holder.command(WRITE10, data=bytes(512))[0] == RESERVATION_CONFLICT


def test_preempt_and_abort_ends_the_preempted_initiator_s_write(
    targetd_factory: DaemonFactory,
) -> None:
    """OTHER's WRITE waits for its last Data-Out when HOLDER preempts it with PREEMPT AND
    ABORT: the write ends without a response and writes nothing; OTHER's next command
    gets REGISTRATIONS PREEMPTED. (Without the abort it would run once its data came and
    answer RESERVATION CONFLICT.)"""
    daemon = targetd_factory(CONFIG)
    holder, other = session(daemon, HOLDER), session(daemon, OTHER)
    assert prout(other, 0x00, 0, 0xBBBB) == GOOD
    assert prout(holder, 0x00, 0, 0xAAAA) == GOOD
    assert prout(holder, 0x01, 0xAAAA, 0, 0x5) == GOOD  # WRITE EXCLUSIVE REGISTRANTS ONLY
    payload = bytes([0x5A]) * 4096
    write = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 8, 0])
    hdr = other.scsi_header(write, write=4096, data_len=2048)
    other.send(hdr, payload[:2048])
    itt = int.from_bytes(hdr[16:20], "big")
    r2t = other.recv()  # the target has the first half and asks for the rest
    assert r2t.opcode == Op.R2T and (r2t.u32(40), r2t.u32(44)) == (2048, 2048)
    assert prout(holder, 0x05, 0xAAAA, 0xBBBB, WRITE_EXCLUSIVE) == GOOD  # PREEMPT AND ABORT
    dout = new_header(Op.DATA_OUT, 0x80, itt=itt, data_length=2048)
    put_u32(dout, 20, r2t.u32(20))
    put_u32(dout, 28, other.expstatsn)
    put_u32(dout, 40, 2048)
    other.send(dout, payload[2048:])
    tur = other.scsi_header(bytes(6))
    other.send(tur)
    resp = other.recv()
    assert resp.opcode == Op.SCSI_RESPONSE
    assert resp.bhs[16:20] == tur[16:20], "the aborted write was answered"
    sense = resp.data[2 : 2 + int.from_bytes(resp.data[:2], "big")]
    assert resp.bhs[3] == 0x02 and parse_sense(sense) == (6, 0x2A, 0x05)
    status, data, _ = holder.command(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]), read=4096)
    assert status == GOOD and data == bytes(4096)
