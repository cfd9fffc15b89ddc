"""Bad input gets the protocol's own answer, and other sessions keep working.

Each case sends something no well-behaved initiator sends, then checks the answer
(Reject, login failure, CHECK CONDITION or a dropped connection) and that a second,
healthy session on the same daemon still reads and writes.
"""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest
from conftest import DEFAULT_IQN, Daemon
from raw_initiator import RawInitiator

from scsi.sense import parse_sense
from targetd.iscsi.pdu import Op, RejectReason, new_header, put_u32

READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])


def write10(lba: int, blocks: int) -> bytes:
    return (
        bytes([0x2A, 0]) + lba.to_bytes(4, "big") + bytes([0]) + blocks.to_bytes(2, "big") + b"\0"
    )


def healthy(d: Daemon) -> RawInitiator:
    ini = RawInitiator(d.port, name="iqn.2026-11.org.targetd.test:healthy")
    resp = ini.login(d.iqn)
    assert resp.opcode == Op.LOGIN_RESPONSE and resp.bhs[36] == 0, resp.bhs.hex()
    ini.clear_unit_attentions()
    return ini


def still_serves(ini: RawInitiator) -> None:
    payload = os.urandom(512)
    status, _, sense = ini.command(write10(7, 1), data=payload)
    assert status == 0, sense.hex()
    status, data, _ = ini.command(bytes([0x28, 0, 0, 0, 0, 7, 0, 0, 1, 0]), read=512)
    assert status == 0 and data == payload


def logged_in(d: Daemon) -> RawInitiator:
    ini = RawInitiator(d.port)
    resp = ini.login(d.iqn)
    assert resp.bhs[36] == 0
    ini.clear_unit_attentions()
    return ini


def test_garbage_before_login_drops_only_that_connection(targetd: Daemon) -> None:
    with healthy(targetd) as good:
        s = socket.create_connection(("127.0.0.1", targetd.port), timeout=5)
        s.sendall(os.urandom(48 * 3))
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except (ConnectionError, TimeoutError):
            pass
        finally:
            s.close()
        still_serves(good)


def test_truncated_pdu_then_disconnect_is_harmless(targetd: Daemon) -> None:
    with healthy(targetd) as good:
        with logged_in(targetd) as bad:
            hdr = bad.scsi_header(write10(0, 8), write=4096, data_len=4096)
            bad.sock.sendall(bytes(hdr) + b"\xaa" * 1000)  # 3 KiB short, then gone
        still_serves(good)


def test_unknown_opcode_gets_reject_and_session_lives(targetd: Daemon) -> None:
    with logged_in(targetd) as ini:
        hdr = new_header(0x1F, 0x80, itt=ini.next_itt())
        put_u32(hdr, 24, ini.cmdsn)
        ini.send(hdr)
        resp = ini.recv()
        assert resp.opcode == Op.REJECT
        assert resp.bhs[2] == RejectReason.COMMAND_NOT_SUPPORTED
        assert resp.data[:48] == bytes(hdr)
        still_serves(ini)


def test_snack_at_erl0_is_rejected(targetd: Daemon) -> None:
    with logged_in(targetd) as ini:
        hdr = new_header(Op.SNACK_REQUEST, 0x80, itt=ini.next_itt())
        ini.send(hdr)
        resp = ini.recv()
        assert resp.opcode == Op.REJECT
        still_serves(ini)


def test_login_pdu_in_full_feature_phase_is_rejected(targetd: Daemon) -> None:
    with logged_in(targetd) as ini:
        hdr = new_header(Op.LOGIN_REQUEST | 0x40, 0x87, itt=ini.next_itt())
        ini.send(hdr)
        resp = ini.recv()
        assert resp.opcode == Op.REJECT and resp.bhs[2] == RejectReason.PROTOCOL_ERROR
        still_serves(ini)


def test_oversized_data_segment_drops_connection_not_daemon(targetd: Daemon) -> None:
    with healthy(targetd) as good:
        with logged_in(targetd) as bad:
            # Far beyond the MaxRecvDataSegmentLength we declared.
            hdr = bad.scsi_header(write10(0, 1), write=512, data_len=0xFFFFF0)
            bad.sock.sendall(bytes(hdr))
            resp = bad.recv()
            assert resp.opcode == Op.REJECT
            assert bad.closed_by_target()
        still_serves(good)


def test_scsi_command_before_login_closes_connection(targetd: Daemon) -> None:
    with RawInitiator(targetd.port) as ini:
        ini.send(ini.scsi_header(READ10, read=512))
        assert ini.closed_by_target()


def test_login_with_bad_version_fails(targetd: Daemon) -> None:
    with RawInitiator(targetd.port) as ini:
        data = b"InitiatorName=iqn.2026-11.x:y\0TargetName=" + targetd.iqn.encode() + b"\0"
        hdr = new_header(Op.LOGIN_REQUEST | 0x40, 0x87, itt=1, data_length=len(data))
        hdr[2] = hdr[3] = 0x05  # version 5: nobody speaks it
        ini.send(hdr, data)
        resp = ini.recv()
        assert resp.opcode == Op.LOGIN_RESPONSE
        assert resp.bhs[36] == 0x02 and resp.bhs[37] == 0x05


def test_invalid_cdb_gets_check_condition(targetd: Daemon) -> None:
    with logged_in(targetd) as ini:
        status, _, sense = ini.command(bytes([0xC7]) + bytes(15))
        assert status == 0x02
        assert parse_sense(sense) == (0x5, 0x20, 0x00)
        status, _, sense = ini.command(
            bytes([0x28, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 1, 0]), read=512
        )
        assert status == 0x02 and parse_sense(sense) == (0x5, 0x21, 0x00)
        still_serves(ini)


def test_command_for_absent_lun(targetd: Daemon) -> None:
    with logged_in(targetd) as ini:
        status, _, sense = ini.command(READ10, lun=9, read=512)
        assert status == 0x02 and parse_sense(sense) == (0x5, 0x25, 0x00)


def test_cmdsn_outside_window_is_ignored(targetd: Daemon) -> None:
    with logged_in(targetd) as ini:
        saved = ini.cmdsn
        ini.cmdsn += 100000  # far beyond MaxCmdSN
        ini.send(ini.scsi_header(READ10, read=512))
        ini.cmdsn = saved
        # The next in-window command is answered; the stray one never is.
        status, data, _ = ini.command(READ10, read=512)
        assert status == 0 and len(data) == 512


@pytest.mark.parametrize("step", [8192, 65536])
def test_write_with_r2t_round_trip(targetd: Daemon, step: int) -> None:
    """A write larger than FirstBurstLength is completed through R2T and Data-Out."""
    with logged_in(targetd) as ini:
        size = 1 << 20
        payload = os.urandom(size)
        first = 65536
        hdr = ini.scsi_header(write10(100, size // 512), write=size, data_len=first)
        ini.send(hdr, payload[:first])
        itt = int.from_bytes(hdr[16:20], "big")
        received = first
        while True:
            resp = ini.recv()
            if resp.opcode == Op.SCSI_RESPONSE:
                assert resp.bhs[3] == 0
                break
            assert resp.opcode == Op.R2T
            ttt, offset, length = resp.u32(20), resp.u32(40), resp.u32(44)
            for datasn, off in enumerate(range(offset, offset + length, step)):
                n = min(step, offset + length - off)
                dout = new_header(
                    Op.DATA_OUT, 0x80 if off + n == offset + length else 0, itt=itt, data_length=n
                )
                put_u32(dout, 20, ttt)
                put_u32(dout, 28, ini.expstatsn)
                put_u32(dout, 36, datasn)
                put_u32(dout, 40, off)
                ini.send(dout, payload[off : off + n])
                received += n
        assert received == size
        status, data, _ = ini.command(bytes([0x28, 0, 0, 0, 0, 100, 0, 0x08, 0, 0]), read=size)
        assert status == 0 and data == payload


def test_late_data_out_of_an_aborted_write_is_dropped_and_the_session_lives(
    targetd: Daemon,
) -> None:
    with logged_in(targetd) as ini:
        size = 1 << 20
        hdr = ini.scsi_header(write10(300, size // 512), write=size)  # F set: all solicited
        ini.send(hdr)
        itt = int.from_bytes(hdr[16:20], "big")
        r2t = ini.recv()
        assert r2t.opcode == Op.R2T
        tmf = new_header(Op.TASK_MGMT_REQUEST | 0x40, 0x80 | 1, itt=ini.next_itt())
        put_u32(tmf, 20, itt)
        put_u32(tmf, 24, ini.cmdsn)
        put_u32(tmf, 28, ini.expstatsn)
        put_u32(tmf, 32, ini.cmdsn - 1)
        ini.send(tmf)
        resp = ini.recv()
        assert resp.opcode == Op.TASK_MGMT_RESPONSE and resp.bhs[2] == 0
        # The Data-Out the initiator had in flight when it aborted.
        dout = new_header(Op.DATA_OUT, 0x80, itt=itt, data_length=65536)
        put_u32(dout, 20, r2t.u32(20))
        put_u32(dout, 28, ini.expstatsn)
        ini.send(dout, bytes(65536))
        # The next answer is the NOP-In for our ping, not a Reject.
        assert ini.nop(b"ping").opcode == Op.NOP_IN
        still_serves(ini)


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` TCP connections that never send a byte."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def test_a_login_succeeds_within_a_second_while_1000_idle_connections_are_open(
    targetd: Daemon,
) -> None:
    with healthy(targetd) as good:
        idle = open_idle(targetd.port, 1000)
        try:
            start = time.monotonic()
            ini = RawInitiator(targetd.port, name="iqn.2026-11.org.targetd.test:late")
            ini.sock.settimeout(1.0)
            resp = ini.login(targetd.iqn)
            assert resp.opcode == Op.LOGIN_RESPONSE and resp.bhs[36] == 0, resp.bhs.hex()
            assert time.monotonic() - start < 1.0
            ini.close()
            # Sessions already logged in are never dropped to make room.
            still_serves(good)
        finally:
            for s in idle:
                s.close()


def test_connections_still_logging_in_give_way_to_new_ones(targetd_factory) -> None:
    cap_config = f"""
[[target]]
name = "{DEFAULT_IQN}"
[[target.lun]]
lun = 0
size = "16MiB"
[limits]
max_sessions = 4
max_pending_logins = 8
"""
    d = targetd_factory(cap_config)
    with healthy(d) as good:
        idle = open_idle(d.port, 8)
        try:
            # A ninth connection that has not logged in yet: the oldest idle one is closed.
            with RawInitiator(d.port, name="iqn.2026-11.org.targetd.test:ninth") as ini:
                assert ini.login(d.iqn).bhs[36] == 0
                idle[0].settimeout(5)
                assert idle[0].recv(1) == b""  # closed without a word
                idle[1].setblocking(False)
                with pytest.raises(BlockingIOError):
                    idle[1].recv(1)  # the others stay
            still_serves(good)
        finally:
            for s in idle:
                s.close()
