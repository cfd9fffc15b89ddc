"""The full-feature connection machine, driven in memory: no sockets, no event loop."""

from __future__ import annotations

import struct
from collections.abc import Callable

import crc32c
import pytest

from scsi.buffers import MemoryBudget
from scsi.command import FileRange, ScsiResult, Status
from targetd.iscsi.connection import (
    AbortTasks,
    CloseConnection,
    Connection,
    ExecuteCommand,
    Output,
    Phase,
    ResetRequested,
    SessionStarted,
)
from targetd.iscsi.pdu import BHS_LEN, Op, RejectReason, new_header, padded, put_u32
from targetd.iscsi.session import SessionTable
from targetd.iscsi.settings import PortalSettings, Settings, TargetSettings

ISID = bytes([0x40, 0, 0, 0, 0, 1])

DEFAULT_SETTINGS = Settings(targets=(TargetSettings("iqn.2026-11.org.targetd:default"),))


def keys(**kv: str) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in kv.items())


class Harness:
    """One Connection plus the initiator's bookkeeping (CmdSN, ITTs)."""

    def __init__(
        self,
        config: Settings | None = None,
        *,
        mrdsl: int = 8192,
        budget: MemoryBudget | None = None,
        **extra: str,
    ) -> None:
        self.config = config or DEFAULT_SETTINGS
        self.sessions = SessionTable()
        self.conn = Connection(self.config, PortalSettings(), self.sessions, budget=budget)
        self.cmdsn = 1
        self.itt = 0
        target = self.config.targets[0].name
        login = keys(
            **{
                "InitiatorName": "iqn.2026-11.test:ini",
                "TargetName": target,
                "MaxRecvDataSegmentLength": str(mrdsl),
                "ImmediateData": "Yes",
                "InitialR2T": "Yes",
                "MaxBurstLength": "65536",
                "FirstBurstLength": "16384",
                **extra,
            }
        )
        hdr = new_header(Op.LOGIN_REQUEST | 0x40, 0x87, itt=self.next_itt(), data_length=len(login))
        hdr[8:14] = ISID
        put_u32(hdr, 24, self.cmdsn)
        out = self.feed(hdr, login)
        assert out[0][0] & 0x3F == Op.LOGIN_RESPONSE and out[0][36] == 0, out[0][36:38].hex()
        events = self.conn.take_events()
        assert isinstance(events[0], SessionStarted)
        assert self.conn.phase is Phase.FULL_FEATURE

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def feed(self, hdr: bytes | bytearray, data: bytes = b"") -> list[bytes]:
        raw = bytes(hdr) + data + bytes(padded(len(data)) - len(data))
        while raw:
            buf = self.conn.receiver.get_buffer()
            n = min(len(buf), len(raw))
            buf[:n] = raw[:n]
            raw = raw[n:]
            self.conn.data_received(n)
        return split_pdus(b"".join(bytes(b) for b in self.conn.take_output()))

    def command(
        self,
        cdb: bytes,
        *,
        read: int = 0,
        write: int = 0,
        data: bytes = b"",
        final: bool = True,
        immediate: bool = False,
        cmdsn: int | None = None,
    ) -> tuple[int, list[bytes]]:
        itt = self.next_itt()
        flags = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | 1
        hdr = new_header(
            Op.SCSI_COMMAND | (0x40 if immediate else 0), flags, itt=itt, data_length=len(data)
        )
        put_u32(hdr, 20, read or write)
        put_u32(hdr, 24, self.cmdsn if cmdsn is None else cmdsn)
        hdr[32 : 32 + len(cdb)] = cdb
        if cmdsn is None and not immediate:
            self.cmdsn += 1
        return itt, self.feed(hdr, data)


def split_pdus(stream: bytes) -> list[bytes]:
    out = []
    while stream:
        dlen = int.from_bytes(stream[5:8], "big")
        total = BHS_LEN + padded(dlen)
        out.append(stream[:total])
        stream = stream[total:]
    return out


def data_of(pdu: bytes) -> bytes:
    return pdu[BHS_LEN : BHS_LEN + int.from_bytes(pdu[5:8], "big")]


def u32(pdu: bytes, off: int) -> int:
    return struct.unpack_from(">I", pdu, off)[0]


def executed(h: Harness) -> ExecuteCommand:
    (event,) = [e for e in h.conn.take_events() if isinstance(e, ExecuteCommand)]
    return event


READ10 = bytes([0x28]) + bytes(9)


def test_read_is_split_at_mrdsl_with_status_in_last_data_in() -> None:
    h = Harness(mrdsl=8192)
    _, out = h.command(READ10, read=20000)
    assert out == []
    ev = executed(h)
    assert ev.command.data_in_length == 20000
    h.conn.scsi_done(ev.task, ScsiResult(data=bytes(range(256)) * 78 + bytes(32)))  # 20000
    pdus = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert [p[0] & 0x3F for p in pdus] == [Op.DATA_IN] * 3
    assert [len(data_of(p)) for p in pdus] == [8192, 8192, 3616]
    assert [u32(p, 40) for p in pdus] == [0, 8192, 16384]  # buffer offsets
    assert [u32(p, 36) for p in pdus] == [0, 1, 2]  # DataSN
    assert pdus[-1][1] & 0x81 == 0x81 and pdus[-1][3] == 0  # F, S, GOOD
    assert not pdus[0][1] & 0x01


def test_read_in_one_data_in_has_every_header_field() -> None:
    h = Harness(mrdsl=8192)
    itt, _ = h.command(READ10, read=4096)
    ev = executed(h)
    h.conn.scsi_done(ev.task, ScsiResult(data=bytes(4096)))
    (pdu,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    header = pdu[:BHS_LEN]
    # Opcode, F+S, status GOOD, no AHS, 4096 bytes, LUN 0, the ITT, TTT ffffffff.
    assert header[:24] == bytes([0x25, 0x81, 0, 0, 0, 0, 0x10, 0]) + bytes(8) + struct.pack(
        ">II", itt, 0xFFFFFFFF
    )
    statsn = u32(header, 24)
    assert (u32(header, 28), u32(header, 32)) == (h.cmdsn, h.cmdsn + 127)  # ExpCmdSN, Max
    assert header[36:] == bytes(12)  # DataSN 0, offset 0, residual 0
    # The status went out with the data: the next response carries the next StatSN.
    h.command(bytes([0]) * 6)  # TEST UNIT READY
    h.conn.scsi_done(executed(h).task, ScsiResult())
    (response,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert u32(response, 24) == statsn + 1


def test_read_with_sense_sends_data_then_status_apart() -> None:
    h = Harness(mrdsl=8192)
    itt, _ = h.command(READ10, read=4096)
    ev = executed(h)
    h.conn.scsi_done(ev.task, ScsiResult(data=bytes(4096), sense=bytes(18)))
    data_in, response = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    # F without S; StatSN is not stamped on a Data-In that carries no status.
    assert data_in[:8] == bytes([0x25, 0x80, 0, 0, 0, 0, 0x10, 0])
    assert u32(data_in, 16) == itt and u32(data_in, 24) == 0
    assert data_in[36:48] == bytes(12)
    assert response[0] & 0x3F == Op.SCSI_RESPONSE and u32(response, 16) == itt


def test_short_read_reports_underflow_residual() -> None:
    h = Harness()
    _, _ = h.command(bytes([0x12, 0, 0, 0, 255, 0]), read=255)
    ev = executed(h)
    h.conn.scsi_done(ev.task, ScsiResult(data=bytes(36)))
    (pdu,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert pdu[1] & 0x02  # U
    assert u32(pdu, 44) == 219


def test_long_result_reports_overflow_and_sends_only_edtl() -> None:
    h = Harness()
    h.command(READ10, read=100)
    ev = executed(h)
    h.conn.scsi_done(ev.task, ScsiResult(data=bytes(512)))
    (pdu,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert len(data_of(pdu)) == 100 and pdu[1] & 0x04 and u32(pdu, 44) == 412


def test_check_condition_goes_in_scsi_response_with_sense() -> None:
    h = Harness()
    h.command(READ10, read=512)
    ev = executed(h)
    sense = bytes([0x70, 0, 5] + [0] * 4 + [10] + [0] * 4 + [0x21, 0] + [0] * 4)
    h.conn.scsi_done(ev.task, ScsiResult(Status.CHECK_CONDITION, sense=sense))
    (pdu,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert pdu[0] & 0x3F == Op.SCSI_RESPONSE and pdu[3] == 0x02
    assert data_of(pdu) == len(sense).to_bytes(2, "big") + sense


def test_write_solicits_remaining_data_with_r2t_in_max_burst_pieces() -> None:
    h = Harness()
    size = 150000
    payload = bytes(i % 241 for i in range(size))
    itt, out = h.command(bytes([0x2A]) + bytes(9), write=size, data=payload[:16384])
    r2ts = [p for p in out if p[0] & 0x3F == Op.R2T]
    assert len(r2ts) == 1  # MaxOutstandingR2T defaults to 1
    assert (u32(r2ts[0], 40), u32(r2ts[0], 44)) == (16384, 65536)
    done = 16384
    statsn_r2t = u32(r2ts[0], 24)
    while r2ts:
        r2t = r2ts.pop()
        ttt, off, length = u32(r2t, 20), u32(r2t, 40), u32(r2t, 44)
        for datasn, pos in enumerate(range(off, off + length, 8192)):
            n = min(8192, off + length - pos)
            d = new_header(
                Op.DATA_OUT, 0x80 if pos + n == off + length else 0, itt=itt, data_length=n
            )
            put_u32(d, 20, ttt)
            put_u32(d, 36, datasn)
            put_u32(d, 40, pos)
            r2ts += [p for p in h.feed(d, payload[pos : pos + n]) if p[0] & 0x3F == Op.R2T]
            done += n
    assert done == size
    assert u32(r2t, 24) == statsn_r2t  # R2Ts do not consume StatSN
    ev = executed(h)
    assert bytes(ev.command.data_out) == payload


@pytest.mark.parametrize("used", [None, 4096])
def test_a_write_that_used_all_its_data_gets_a_bare_response(used: int | None) -> None:
    h = Harness()
    itt, _ = h.command(bytes([0x2A]) + bytes(9), write=4096, data=bytes(4096))
    ev = executed(h)
    h.conn.scsi_done(ev.task, ScsiResult(data_out_used=used))
    (pdu,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    # SCSI Response, F, response 0, status GOOD, no data, the ITT, no residual.
    assert pdu[:8] == bytes([0x21, 0x80, 0, 0, 0, 0, 0, 0])
    assert u32(pdu, 16) == itt and pdu[44:48] == bytes(4)
    assert (u32(pdu, 28), u32(pdu, 32)) == (h.cmdsn, h.cmdsn + 127)
    h.command(bytes(6))  # TEST UNIT READY: the next StatSN
    h.conn.scsi_done(executed(h).task, ScsiResult())
    (response,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert u32(response, 24) == u32(pdu, 24) + 1


def test_a_write_that_used_less_reports_the_underflow() -> None:
    h = Harness()
    h.command(bytes([0x2A]) + bytes(9), write=4096, data=bytes(4096))
    h.conn.scsi_done(executed(h).task, ScsiResult(data_out_used=1024))
    (pdu,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert pdu[1] == 0x80 | 0x02 and u32(pdu, 44) == 3072


def test_data_out_with_unknown_ttt_is_rejected() -> None:
    h = Harness()
    itt, _ = h.command(bytes([0x2A]) + bytes(9), write=32768, data=bytes(16384))
    d = new_header(Op.DATA_OUT, 0x80, itt=itt, data_length=512)
    put_u32(d, 20, 0x7777)
    put_u32(d, 40, 16384)
    (rej,) = h.feed(d, bytes(512))
    assert rej[0] & 0x3F == Op.REJECT and rej[2] == RejectReason.INVALID_PDU_FIELD


def test_commands_wait_for_their_cmdsn_and_out_of_window_are_dropped() -> None:
    h = Harness()
    base = h.cmdsn
    h.command(READ10, read=512, cmdsn=base + 1)
    assert not [e for e in h.conn.take_events() if isinstance(e, ExecuteCommand)]
    h.command(READ10, read=512, cmdsn=base)
    assert len([e for e in h.conn.take_events() if isinstance(e, ExecuteCommand)]) == 2
    h.command(READ10, read=512, cmdsn=base + 100000)
    assert not h.conn.take_events()


def test_nop_out_ping_is_echoed() -> None:
    h = Harness()
    hdr = new_header(Op.NOP_OUT | 0x40, 0x80, itt=h.next_itt(), data_length=5)
    put_u32(hdr, 20, 0xFFFFFFFF)
    put_u32(hdr, 24, h.cmdsn)
    (pdu,) = h.feed(hdr, b"hello")
    assert pdu[0] & 0x3F == Op.NOP_IN and data_of(pdu) == b"hello"
    assert u32(pdu, 16) == h.itt and u32(pdu, 20) == 0xFFFFFFFF


def test_keepalive_pings_then_drops_a_silent_initiator() -> None:
    h = Harness()
    h.conn.tick(100.0)
    (ping,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert ping[0] & 0x3F == Op.NOP_IN and u32(ping, 16) == 0xFFFFFFFF
    assert u32(ping, 20) != 0xFFFFFFFF
    h.conn.tick(200.0)
    assert any(isinstance(e, CloseConnection) for e in h.conn.take_events())


def test_abort_task_cancels_and_answers_after_abort_finishes() -> None:
    h = Harness()
    itt, _ = h.command(READ10, read=512)
    ev = executed(h)
    tmf = new_header(Op.TASK_MGMT_REQUEST | 0x40, 0x80 | 1, itt=h.next_itt())
    put_u32(tmf, 20, itt)
    put_u32(tmf, 24, h.cmdsn)
    put_u32(tmf, 32, h.cmdsn - 1)
    assert h.feed(tmf) == []
    (abort,) = h.conn.take_events()
    assert isinstance(abort, AbortTasks) and abort.tasks == (ev.task,)
    h.conn.aborts_finished(abort.token)
    (resp,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert resp[0] & 0x3F == Op.TASK_MGMT_RESPONSE and resp[2] == 0
    # The aborted command's late completion sends nothing.
    h.conn.scsi_done(ev.task, ScsiResult(data=bytes(512)))
    assert h.conn.take_output() == []


def test_abort_of_a_command_already_answered_says_task_does_not_exist() -> None:
    """RFC 7143 11.5.1 c): the command ended before the ABORT TASK came (its CmdSN is below
    ExpCmdSN, outside the window): "Task does not exist", not "Function complete", which
    would tell the initiator a command it saw answered GOOD was aborted (libiscsi's
    iSCSITMF.AbortTaskSimpleAsync fails on exactly that when the write wins the race)."""
    h = Harness()
    itt, _ = h.command(READ10, read=512)
    ev = executed(h)
    h.conn.scsi_done(ev.task, ScsiResult(data=bytes(512)))
    h.conn.take_output()
    tmf = new_header(Op.TASK_MGMT_REQUEST | 0x40, 0x80 | 1, itt=h.next_itt())
    put_u32(tmf, 20, itt)
    put_u32(tmf, 24, h.cmdsn)
    put_u32(tmf, 32, h.cmdsn - 1)
    (resp,) = h.feed(tmf)
    assert resp[0] & 0x3F == Op.TASK_MGMT_RESPONSE and resp[2] == 1


def test_lun_reset_is_handed_to_the_driver() -> None:
    h = Harness()
    tmf = new_header(Op.TASK_MGMT_REQUEST | 0x40, 0x80 | 5, itt=h.next_itt())
    put_u32(tmf, 24, h.cmdsn)
    h.feed(tmf)
    (reset,) = h.conn.take_events()
    assert isinstance(reset, ResetRequested) and reset.lun == 0


def test_logout_waits_for_running_commands() -> None:
    h = Harness()
    h.command(READ10, read=512)
    ev = executed(h)
    lo = new_header(Op.LOGOUT_REQUEST | 0x40, 0x80, itt=h.next_itt())
    put_u32(lo, 24, h.cmdsn)
    assert h.feed(lo) == []
    h.conn.scsi_done(ev.task, ScsiResult(data=bytes(512)))
    pdus = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert [p[0] & 0x3F for p in pdus] == [Op.DATA_IN, Op.LOGOUT_RESPONSE]
    assert any(isinstance(e, CloseConnection) for e in h.conn.take_events())


def test_statsn_advances_by_one_per_status() -> None:
    h = Harness()
    sns = []
    for _ in range(3):
        h.command(READ10, read=512)
        ev = executed(h)
        h.conn.scsi_done(ev.task, ScsiResult(data=bytes(512)))
        (pdu,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
        sns.append(u32(pdu, 24))
        assert u32(pdu, 28) == h.cmdsn  # ExpCmdSN
    assert sns == [sns[0], sns[0] + 1, sns[0] + 2]


@pytest.mark.parametrize("digest", ["CRC32C"])
def test_digests_after_login(digest: str) -> None:
    h = Harness(HeaderDigest=digest, DataDigest=digest)
    assert h.conn.header_digest and h.conn.data_digest
    assert h.conn.receiver.header_digest


def test_unsolicited_data_out_up_to_first_burst_then_r2t() -> None:
    h = Harness(InitialR2T="No")
    assert not h.conn.initial_r2t
    size = 40000
    payload = bytes(i % 199 for i in range(size))
    itt, out = h.command(bytes([0x2A]) + bytes(9), write=size, data=payload[:4096], final=False)
    r2ts = [p for p in out if p[0] & 0x3F == Op.R2T]
    # FirstBurstLength is 16384: the initiator may send up to there unsolicited.
    assert [(u32(p, 40), u32(p, 44)) for p in r2ts] == [(16384, size - 16384)]
    for datasn, pos in enumerate(range(4096, 16384, 4096)):
        d = new_header(Op.DATA_OUT, 0x80 if pos + 4096 == 16384 else 0, itt=itt, data_length=4096)
        put_u32(d, 20, 0xFFFFFFFF)
        put_u32(d, 36, datasn)
        put_u32(d, 40, pos)
        assert h.feed(d, payload[pos : pos + 4096]) == []
    d = new_header(Op.DATA_OUT, 0x80, itt=itt, data_length=size - 16384)
    put_u32(d, 20, u32(r2ts[0], 20))
    put_u32(d, 40, 16384)
    h.feed(d, payload[16384:])
    assert bytes(executed(h).command.data_out) == payload


@pytest.mark.parametrize("datasns", [(0, 0), (1, 0), (27,)])
def test_data_out_datasn_out_of_order_fails_the_command_not_the_connection(
    datasns: tuple[int, ...],
) -> None:
    h = Harness()
    itt, out = h.command(bytes([0x2A]) + bytes(9), write=1024)
    (r2t,) = out
    replies: list[bytes] = []
    for i, datasn in enumerate(datasns):
        d = new_header(
            Op.DATA_OUT,
            0x80 if i == len(datasns) - 1 else 0,
            itt=itt,
            data_length=1024 // len(datasns),
        )
        put_u32(d, 20, u32(r2t, 20))
        put_u32(d, 36, datasn)
        put_u32(d, 40, i * 1024 // len(datasns))
        replies += h.feed(d, bytes(1024 // len(datasns)))
    ops = [p[0] & 0x3F for p in replies]
    # The command ends with ABORTED COMMAND / DATA PHASE ERROR; its other Data-Out is
    # dropped without a Reject.
    status = [p for p in replies if p[0] & 0x3F == Op.SCSI_RESPONSE]
    assert len(status) == 1 and status[0][3] == 0x02
    sense = data_of(status[0])[2:]
    assert (sense[2] & 0x0F, sense[12], sense[13]) == (0x0B, 0x4B, 0x00)
    assert Op.REJECT not in ops
    assert not [e for e in h.conn.take_events() if isinstance(e, (CloseConnection, ExecuteCommand))]
    # The connection still serves commands.
    h.command(READ10, read=512)
    assert executed(h)


def test_solicited_data_out_lands_in_the_command_buffer_without_a_copy() -> None:
    h = Harness()
    size = 65536
    itt, out = h.command(bytes([0x2A]) + bytes(9), write=size)
    (r2t,) = out
    d = new_header(Op.DATA_OUT, 0x80, itt=itt, data_length=size)
    put_u32(d, 20, u32(r2t, 20))
    seen: list[object] = []
    real = h.conn.receive

    def spy(items: list) -> None:
        seen.extend(item.data for item in items)
        real(items)

    h.conn.receive = spy  # type: ignore[method-assign]
    h.feed(d, bytes(range(256)) * (size // 256))
    ev = executed(h)
    (data,) = seen
    assert isinstance(data, memoryview) and data.obj is ev.command.data_out.obj


def test_a_connection_that_never_logs_in_is_dropped() -> None:
    conn = Connection(DEFAULT_SETTINGS, PortalSettings(), SessionTable(), now=100.0)
    conn.tick(104.0)
    assert conn.take_events() == []
    conn.tick(100.0 + 5.5)  # no login request within the step deadline
    assert [type(e) for e in conn.take_events()] == [CloseConnection]


def test_a_login_that_drags_on_is_dropped_even_if_it_keeps_talking() -> None:
    conn = Connection(DEFAULT_SETTINGS, PortalSettings(), SessionTable(), now=100.0)
    for t in range(101, 115, 4):
        conn.now = float(t)
        conn.receive([])  # something heard
        conn.tick(float(t))
        assert conn.take_events() == []
    conn.tick(100.0 + 15.5)
    assert [type(e) for e in conn.take_events()] == [CloseConnection]


def test_a_stray_data_out_does_not_overwrite_data_already_received() -> None:
    h = Harness()
    size = 65536
    payload = bytes(range(256)) * (size // 256)
    itt, out = h.command(bytes([0x2A]) + bytes(9), write=size)
    (r2t,) = out
    ttt = u32(r2t, 20)
    half = size // 2
    first = new_header(Op.DATA_OUT, 0, itt=itt, data_length=half)
    put_u32(first, 20, ttt)
    assert h.feed(first, payload[:half]) == []
    stray = new_header(Op.DATA_OUT, 0, itt=itt, data_length=half)  # offset 0 again
    put_u32(stray, 20, ttt)
    put_u32(stray, 36, 1)
    (rej,) = h.feed(stray, b"\xee" * half)
    assert rej[0] & 0x3F == Op.REJECT
    last = new_header(Op.DATA_OUT, 0x80, itt=itt, data_length=half)
    put_u32(last, 20, ttt)
    put_u32(last, 36, 1)
    put_u32(last, 40, half)
    h.feed(last, payload[half:])
    assert bytes(executed(h).command.data_out) == payload


@pytest.mark.parametrize("function", [1, 2])  # ABORT TASK, ABORT TASK SET
def test_late_data_out_of_an_aborted_write_is_dropped_quietly(function: int) -> None:
    h = Harness()
    itt, (r2t,) = h.command(bytes([0x2A]) + bytes(9), write=4096)
    tmf = new_header(Op.TASK_MGMT_REQUEST | 0x40, 0x80 | function, itt=h.next_itt())
    put_u32(tmf, 20, itt)
    put_u32(tmf, 24, h.cmdsn)
    put_u32(tmf, 32, h.cmdsn - 1)
    h.feed(tmf)
    (abort,) = h.conn.take_events()
    h.conn.aborts_finished(abort.token)
    (resp,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert resp[0] & 0x3F == Op.TASK_MGMT_RESPONSE and resp[2] == 0
    # The initiator's Data-Out already in flight arrives after the abort: no Reject (libiscsi
    # drops the whole session on one), nothing executed.
    d = new_header(Op.DATA_OUT, 0x80, itt=itt, data_length=4096)
    put_u32(d, 20, u32(r2t, 20))
    assert h.feed(d, bytes(4096)) == []
    assert h.conn.take_events() == []
    h.command(READ10, read=512)
    assert executed(h)


def test_the_command_window_closes_while_commands_are_in_flight() -> None:
    h = Harness()
    for _ in range(3):
        h.command(READ10, read=512)
    events = [e for e in h.conn.take_events() if isinstance(e, ExecuteCommand)]
    session = h.conn.session
    assert session is not None
    assert session.max_cmdsn == session.exp_cmdsn + 128 - 3 - 1
    h.conn.scsi_done(events[0].task, ScsiResult(data=bytes(512)))
    (resp,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert u32(resp, 32) == session.exp_cmdsn + 128 - 2 - 1  # MaxCmdSN moved on by one


def test_a_write_that_does_not_fit_is_solicited_only_when_buffers_come_back() -> None:
    budget = MemoryBudget(64 << 20, accounts=1, account_limit=64 << 20)
    h = Harness(budget=budget, MaxBurstLength="262144")
    size = 48 << 20
    write16 = bytes([0x8A]) + bytes(15)
    first, (r2t,) = h.command(write16, write=size)
    assert r2t[0] & 0x3F == Op.R2T and u32(r2t, 44) == 262144
    second, out = h.command(write16, write=size)
    assert out == []  # no room for a second 48 MiB buffer: nothing solicited
    assert h.conn.account.used == size
    # The first write gets its data and completes: its buffer comes back and the second
    # write is solicited.
    offset = 0
    while offset < size:
        out = []
        for _ in range(8):  # MaxOutstandingR2T bursts
            if offset >= size:
                break
            d = new_header(Op.DATA_OUT, 0x80, itt=first, data_length=262144)
            put_u32(d, 20, u32(r2t, 20))
            put_u32(d, 40, offset)
            out += h.feed(d, bytes(262144))
            offset += 262144
            r2ts = [p for p in out if p[0] & 0x3F == Op.R2T]
            if r2ts:
                r2t = r2ts[0]
                out = out[1:]
    ev = executed(h)
    assert ev.command.tag == first
    h.conn.scsi_done(ev.task, ScsiResult())
    h.conn.take_output()
    assert h.conn.take_events() == []
    (r2t2,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert r2t2[0] & 0x3F == Op.R2T and u32(r2t2, 16) == second
    assert h.conn.account.used == size


class FakeHold:
    """The task set's hold on a READ answered from a file (scsi/task_set.py)."""

    def __init__(self) -> None:
        self.released = 0
        self.nudge: Callable[[], None] | None = None

    def release(self) -> None:
        self.released += 1

    def on_wanted(self, nudge: Callable[[], None]) -> None:
        self.nudge = nudge


class FakeFile:
    fd = 99


def nop_out(h: Harness, exp_stat_sn: int) -> list[Output]:
    """A NOP-Out (immediate, no reply wanted) carrying ``exp_stat_sn``."""
    hdr = new_header(Op.NOP_OUT | 0x40, 0x80, itt=0xFFFFFFFF)
    put_u32(hdr, 20, 0xFFFFFFFF)
    put_u32(hdr, 24, h.cmdsn)
    put_u32(hdr, 28, exp_stat_sn)
    h.feed(hdr)
    return h.conn.take_output()


def read_from_file(h: Harness, hold: FakeHold) -> int:
    """A READ answered with a FileRange and ``hold``: the StatSN of its status."""
    h.command(READ10, read=4096)
    ev = executed(h)
    h.conn.scsi_done(ev.task, ScsiResult(data=FileRange(FakeFile(), 0, 4096), hold=hold))
    status = h.conn.take_output()[0]
    assert isinstance(status, bytearray) and status[1] & 0x01  # status in the Data-In
    return u32(bytes(status), 24)


def test_a_read_sent_from_a_file_completes_when_the_initiator_acknowledges_its_status() -> None:
    h = Harness()
    hold = FakeHold()
    stat_sn = read_from_file(h, hold)
    assert hold.nudge is not None
    nop_out(h, stat_sn)  # not yet: the initiator does not have that status
    nop_out(h, stat_sn + 7)  # further than anything sent: not believed
    assert hold.released == 0
    nop_out(h, stat_sn + 1)
    assert hold.released == 1
    nop_out(h, stat_sn + 1)
    assert hold.released == 1  # released once


def test_a_task_waiting_for_a_held_read_makes_the_connection_ask_for_exp_stat_sn() -> None:
    h = Harness()
    woken: list[int] = []
    h.conn.wake = lambda: woken.append(1)
    first, second = FakeHold(), FakeHold()
    read_from_file(h, first)
    stat_sn = read_from_file(h, second)
    assert first.nudge is not None and second.nudge is not None
    first.nudge()
    (ping,) = split_pdus(b"".join(bytes(b) for b in h.conn.take_output()))
    assert ping[0] & 0x3F == Op.NOP_IN and u32(ping, 16) == 0xFFFFFFFF
    assert u32(ping, 20) != 0xFFFFFFFF and u32(ping, 24) == stat_sn + 1
    assert woken == [1]
    second.nudge()  # the ping already follows both statuses: not another one
    assert h.conn.take_output() == [] and woken == [1]
    nop_out(h, stat_sn + 1)  # the initiator's answer to the ping
    assert (first.released, second.released) == (1, 1)


def test_a_closed_connection_releases_its_held_reads() -> None:
    h = Harness()
    hold = FakeHold()
    read_from_file(h, hold)
    h.conn.closed()
    assert hold.released == 1


def test_a_read_that_ends_after_the_target_closed_the_connection_is_not_held() -> None:
    """The target closes a connection (a cold reset, a session reinstatement, a keepalive
    timeout) while one READ's bytes may still wait in the sockets and another READ still
    runs: the second ends with nothing sent (its sending side is shut), so it releases its
    hold at once; only the first waits for the initiator's acknowledgement, which then
    leaves the connection holding nothing (the driver closes it)."""
    h = Harness()
    sent, late = FakeHold(), FakeHold()
    stat_sn = read_from_file(h, sent)
    h.command(READ10, read=4096)
    running = executed(h)
    h.conn.phase = Phase.CLOSED  # what the driver's half-close does
    h.conn.scsi_done(running.task, ScsiResult(data=FileRange(FakeFile(), 0, 4096), hold=late))
    assert h.conn.take_output() == []
    assert (sent.released, late.released) == (0, 1)
    assert h.conn.holding
    nop_out(h, stat_sn + 1)  # the initiator read the first READ after the close
    assert sent.released == 1
    assert not h.conn.holding


@pytest.mark.parametrize("digest", [False, True])
def test_a_write_s_good_status_carries_the_sequence_numbers_every_status_does(
    digest: bool,
) -> None:
    # The common write's status is built in one pack, apart from _send: it must stamp
    # StatSN, ExpCmdSN and MaxCmdSN as _send does, and get its header digest.
    h = Harness()
    h.conn.header_digest = digest  # what the replies carry (the harness sends none)
    write10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    itts = [h.command(write10, write=512, data=b"w" * 512)[0] for _ in range(2)]
    h.command(READ10, read=512)
    events = [e for e in h.conn.take_events() if isinstance(e, ExecuteCommand)]
    session = h.conn.session
    assert session is not None and len(events) == 3
    first_sn = h.conn.stat_sn
    statuses = []
    results = (ScsiResult(), ScsiResult(), ScsiResult(data=bytes(512)))
    for event, result in zip(events, results, strict=True):
        h.conn.scsi_done(event.task, result)
        out = h.conn.take_output()
        hdr = bytes(out[0])
        if digest:
            assert bytes(out[1]) == crc32c.crc32c(hdr).to_bytes(4, "little")
        statuses.append(hdr)
    for i, (itt, hdr) in enumerate(zip(itts, statuses[:2], strict=True)):
        assert hdr[:4] == bytes([Op.SCSI_RESPONSE, 0x80, 0, 0])  # GOOD, no residual
        assert hdr[4:16] == bytes(12) and hdr[36:] == bytes(12)  # no data, no residual
        assert u32(hdr, 16) == itt
        assert u32(hdr, 24) == first_sn + i
        # ExpCmdSN and MaxCmdSN as the READ's status (built by _send) has them, with the
        # window one command wider for each that ended since.
        assert u32(hdr, 28) == u32(statuses[2], 28) == h.cmdsn
        assert u32(hdr, 32) == u32(statuses[2], 32) - (2 - i)
    assert session.max_cmdsn == u32(statuses[2], 32)


def test_the_records_built_by_position_on_every_command_keep_their_field_order() -> None:
    # _on_scsi_command and _maybe_start build Task and ScsiCommand by position (keyword
    # arguments cost twice as much): a reordered field would shift every value after it.
    from dataclasses import fields

    from scsi.command import ScsiCommand
    from targetd.iscsi.connection_state import Task

    assert [f.name for f in fields(Task)][:9] == [
        "itt", "lun", "lun_raw", "cdb", "cmdsn", "edtl", "read", "write", "attribute",
    ]  # fmt: skip
    assert [f.name for f in fields(ScsiCommand)] == [
        "cdb", "lun", "nexus", "data_out", "data_in_length", "attribute", "tag", "buffers",
        "file_data_in",
    ]  # fmt: skip
