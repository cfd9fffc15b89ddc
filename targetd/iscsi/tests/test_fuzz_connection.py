"""Property-based bad input for the sans-I/O iSCSI machines (docs/design.md, the promises).

Arbitrary bytes and structurally valid but wrong PDUs go through a logged-in
:class:`Connection`'s receiver in random chunkings; random login requests go through
:class:`LoginMachine` and random Text Requests through a connection. Whatever arrives, no
exception escapes, every byte sent back parses as a target PDU, and the machine either
still answers a well-formed NOP-Out or has asked for the connection to close.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scsi.command import ScsiResult, Status
from scsi.sense import Reason, build_sense
from targetd.iscsi.chap import chap_response
from targetd.iscsi.connection import (
    AbortTasks,
    CloseConnection,
    Connection,
    ExecuteCommand,
    Phase,
    ResetRequested,
    SessionStarted,
)
from targetd.iscsi.keys import KEYS
from targetd.iscsi.login import LoginMachine
from targetd.iscsi.pdu import BHS_LEN, Op, Pdu, new_header, padded, put_u32
from targetd.iscsi.session import SessionTable
from targetd.iscsi.settings import PortalSettings, Secret, Settings, TargetSettings

# TARGETD_FUZZ_EXAMPLES=2000 digs deeper than the default run (about a second per test).
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("TARGETD_FUZZ_EXAMPLES", "60")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz")

ISID = bytes([0x40, 0, 0, 0, 0, 7])
TARGET_OPCODES = {
    Op.NOP_IN,
    Op.SCSI_RESPONSE,
    Op.TASK_MGMT_RESPONSE,
    Op.LOGIN_RESPONSE,
    Op.TEXT_RESPONSE,
    Op.DATA_IN,
    Op.LOGOUT_RESPONSE,
    Op.R2T,
    Op.ASYNC_MESSAGE,
    Op.REJECT,
}
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0])
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 8, 0])
CDBS = (READ10, WRITE10, bytes(6), bytes([0x12, 0, 0, 0, 96, 0]), bytes([0xA0]) + bytes(11))

DEFAULT_SETTINGS = Settings(targets=(TargetSettings("iqn.2026-11.org.targetd:default"),))


def keys(**kv: str) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in kv.items())


# -- output parsing --------------------------------------------------------------------
def parse_output(stream: bytes, *, header_digest: bool, data_digest: bool) -> list[bytes]:
    """Split what the target sent into BHSs; fail on anything that is not a target PDU."""
    bhss = []
    pos = 0
    while pos < len(stream):
        assert len(stream) - pos >= BHS_LEN, f"truncated BHS in output at {pos}"
        bhs = stream[pos : pos + BHS_LEN]
        assert bhs[0] & 0x3F in TARGET_OPCODES, f"opcode {bhs[0]:#x} is not a target PDU"
        assert bhs[4] == 0, "target PDUs carry no AHS"
        dlen = int.from_bytes(bhs[5:8], "big")
        # Digests start after the final Login Response, never on one.
        digests = bhs[0] & 0x3F != Op.LOGIN_RESPONSE
        pos += BHS_LEN + (4 if header_digest and digests else 0)
        if dlen:
            pos += padded(dlen) + (4 if data_digest and digests else 0)
        assert pos <= len(stream), "data segment runs past the output"
        bhss.append(bhs)
    return bhss


@dataclass
class Driver:
    """A Connection plus a fake driver: runs commands instantly, finishes aborts."""

    conn: Connection
    sessions: SessionTable
    cmdsn: int = 1
    itt: int = 0
    closed: bool = False
    sent: list[bytes] = field(default_factory=list)  # every BHS the target produced
    result_seed: int = 0

    @classmethod
    def logged_in(cls, config: Settings | None = None, **extra: str) -> Driver:
        config = config or DEFAULT_SETTINGS
        sessions = SessionTable()
        d = cls(Connection(config, PortalSettings(), sessions), sessions)
        login = keys(
            InitiatorName="iqn.2026-11.test:fuzz",
            TargetName=config.targets[0].name,
            MaxRecvDataSegmentLength="8192",
            ImmediateData="Yes",
            InitialR2T="No",
            MaxBurstLength="65536",
            FirstBurstLength="16384",
            **extra,
        )
        hdr = new_header(Op.LOGIN_REQUEST | 0x40, 0x87, itt=d.next_itt(), data_length=len(login))
        hdr[8:14] = ISID
        put_u32(hdr, 24, d.cmdsn)
        d.feed(bytes(hdr) + login + bytes(padded(len(login)) - len(login)), [1 << 20])
        assert d.conn.phase is Phase.FULL_FEATURE
        assert d.sent[-1][0] & 0x3F == Op.LOGIN_RESPONSE and d.sent[-1][36] == 0
        return d

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def feed(self, raw: bytes, chunks: list[int]) -> None:
        """Feed ``raw`` through get_buffer/data_received in pieces of ``chunks`` sizes."""
        i = 0
        while raw and not self.closed:
            buf = self.conn.receiver.get_buffer()
            assert len(buf) > 0, "receiver offered an empty buffer"
            want = chunks[i % len(chunks)] if chunks else len(raw)
            i += 1
            n = min(len(buf), len(raw), max(want, 1))
            buf[:n] = raw[:n]
            raw = raw[n:]
            self.conn.data_received(n)
            self.pump()

    def pump(self) -> None:
        # Output produced with the close (a Reject, then CloseConnection) is still sent;
        # nothing may come once a close has been acted on.
        closed_before = self.closed
        events = self.conn.take_events()
        while events:
            for event in events:
                self.handle(event)
            events = self.conn.take_events()
        out = b"".join(bytes(b) for b in self.conn.take_output())
        if out:
            assert not closed_before, "output after CloseConnection"
            self.sent += parse_output(
                out, header_digest=self.conn.header_digest, data_digest=self.conn.data_digest
            )

    def handle(self, event: object) -> None:
        if isinstance(event, CloseConnection):
            self.closed = True
            self.conn.closed()
        elif isinstance(event, ExecuteCommand):
            self.conn.scsi_done(event.task, self.result(event))
        elif isinstance(event, AbortTasks | ResetRequested):
            self.conn.aborts_finished(event.token)
        else:
            assert isinstance(event, SessionStarted), event

    def result(self, event: ExecuteCommand) -> ScsiResult:
        """Vary the outcome so that every Data-In / residual path is taken."""
        self.result_seed += 1
        kind = self.result_seed % 4
        if kind == 0:
            return ScsiResult(Status.CHECK_CONDITION, sense=build_sense(Reason.LBA_OUT_OF_RANGE))
        if kind == 1:
            return ScsiResult(data=bytes(self.result_seed * 37 % 70000))
        if kind == 2:
            return ScsiResult(data_out_used=self.result_seed * 13 % 5000)
        return ScsiResult()

    def still_answers(self) -> None:
        """A fresh, well-formed immediate NOP-Out gets its NOP-In (unless closed)."""
        if self.closed or self.conn.phase is not Phase.FULL_FEATURE:
            return
        itt = 0x7EEEEEEE
        assert itt not in self.conn.tasks
        hdr = new_header(Op.NOP_OUT | 0x40, 0x80, itt=itt, data_length=4)
        put_u32(hdr, 20, 0xFFFFFFFF)
        put_u32(hdr, 24, self.conn.session.exp_cmdsn)  # type: ignore[union-attr]
        # A stream left mid-PDU by the fuzz would swallow the ping: only check when idle.
        if self.conn.receiver._state.name != "HEADER" or (
            self.conn.receiver._end != self.conn.receiver._start
        ):
            return
        before = len(self.sent)
        self.feed(bytes(hdr) + b"ping", [])
        replies = [b for b in self.sent[before:] if b[0] & 0x3F == Op.NOP_IN]
        assert self.closed or any(struct.unpack_from(">I", b, 16)[0] == itt for b in replies)


# -- strategies --------------------------------------------------------------------------
chunkings = st.lists(st.integers(1, 700), min_size=1, max_size=8)
u32s = st.one_of(
    st.sampled_from([0, 1, 2, 3, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]),
    st.integers(0, 0xFFFFFFFF),
)


@st.composite
def wrong_pdus(draw: st.DrawFn, *, exp_cmdsn: int = 1, max_data: int = 20000) -> bytes:
    """A PDU whose framing is right but whose fields are anything."""
    opcode = draw(
        st.one_of(
            st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10]),
            st.integers(0, 0x3F),
        )
    )
    immediate = draw(st.booleans())
    hdr = bytearray(BHS_LEN)
    hdr[0] = opcode | (0x40 if immediate else 0) | (0x80 if draw(st.booleans()) else 0)
    hdr[1] = draw(
        st.one_of(st.sampled_from([0x80, 0x81, 0xA1, 0xC1, 0x00, 0x01]), st.integers(0, 255))
    )
    hdr[2:4] = draw(st.binary(min_size=2, max_size=2))
    ahs = b""
    if draw(st.integers(0, 5)) == 0:
        kind = draw(st.sampled_from(["ext_cdb", "junk"]))
        if kind == "ext_cdb":
            extra = draw(st.binary(max_size=24))
            body = bytes([0]) + extra  # reserved byte then CDB bytes beyond 16
            ahs = len(body).to_bytes(2, "big") + bytes([1]) + body
            ahs += bytes(-len(ahs) % 4)
        else:
            ahs = draw(st.binary(min_size=4, max_size=64))
            ahs += bytes(-len(ahs) % 4)
    hdr[4] = len(ahs) // 4
    dlen = draw(st.one_of(st.integers(0, 64), st.integers(0, max_data), st.just(0)))
    hdr[5:8] = dlen.to_bytes(3, "big")
    lun = draw(
        st.one_of(
            st.sampled_from([bytes(8), bytes([0, 1]) + bytes(6)]), st.binary(min_size=8, max_size=8)
        )
    )
    hdr[8:16] = lun
    put_u32(hdr, 16, draw(st.one_of(st.sampled_from([1, 2, 3, 0xFFFFFFFF]), u32s)))
    put_u32(
        hdr,
        20,
        draw(
            st.one_of(
                st.sampled_from([0, 512, 4096, 8192, 0xFFFFFFFF, 64 << 20, (64 << 20) + 1]), u32s
            )
        ),
    )
    put_u32(hdr, 24, draw(st.one_of(st.integers(exp_cmdsn - 3, exp_cmdsn + 4), u32s)) & 0xFFFFFFFF)
    put_u32(hdr, 28, draw(u32s))
    tail = draw(
        st.one_of(
            st.sampled_from(CDBS).map(lambda c: c.ljust(16, b"\0")),
            st.binary(min_size=16, max_size=16),
        )
    )
    hdr[32:48] = tail
    if opcode == Op.DATA_OUT or draw(st.booleans()):
        put_u32(hdr, 36, draw(st.one_of(st.integers(0, 3), u32s)))  # DataSN
        put_u32(hdr, 40, draw(st.one_of(st.sampled_from([0, 512, 4096, 16384]), u32s)))  # offset
    data = bytes([0xA5]) * dlen
    return bytes(hdr) + ahs + data + bytes(padded(dlen) - dlen)


# -- full-feature phase ------------------------------------------------------------------
@FUZZ
@given(junk=st.binary(max_size=4096), chunks=chunkings)
def test_arbitrary_bytes_after_login(junk: bytes, chunks: list[int]) -> None:
    d = Driver.logged_in()
    d.feed(junk, chunks)
    d.still_answers()


@FUZZ
@given(st.data())
def test_wrong_pdus_after_login(data: st.DataObject) -> None:
    d = Driver.logged_in()
    chunks = data.draw(chunkings)
    for _ in range(data.draw(st.integers(1, 8))):
        exp = d.conn.session.exp_cmdsn if d.conn.session else 1
        pdu = data.draw(wrong_pdus(exp_cmdsn=exp))
        if data.draw(st.integers(0, 9)) == 0:
            pdu = pdu[: data.draw(st.integers(0, len(pdu)))]  # a truncated stream
        d.feed(pdu, chunks)
        if d.closed:
            break
    d.still_answers()


@FUZZ
@given(st.data())
def test_wrong_pdus_with_digests(data: st.DataObject) -> None:
    """With digests on, random PDUs mostly fail their header digest: a clean close."""
    d = Driver.logged_in(HeaderDigest="CRC32C", DataDigest="CRC32C")
    assert d.conn.header_digest and d.conn.data_digest
    pdu = data.draw(wrong_pdus())
    d.feed(pdu + bytes(8), data.draw(chunkings))
    assert d.closed or d.conn.phase is Phase.FULL_FEATURE


@FUZZ
@given(dlen=st.integers(0, 262144 + 8), chunks=chunkings, write=st.booleans())
def test_data_segment_sizes_up_to_and_past_the_limit(
    dlen: int, chunks: list[int], write: bool
) -> None:
    d = Driver.logged_in()
    limit = d.conn.receiver.max_data_length
    itt = d.next_itt()
    hdr = new_header(Op.SCSI_COMMAND, 0xA1 if write else 0x81, itt=itt, data_length=dlen)
    put_u32(hdr, 20, dlen)
    put_u32(hdr, 24, d.conn.session.exp_cmdsn)  # type: ignore[union-attr]
    hdr[32:42] = WRITE10 if write else READ10
    d.feed(bytes(hdr) + bytes(padded(dlen)), [c * 97 for c in chunks])
    if dlen > limit:
        assert d.closed
    elif dlen and (not write or dlen > d.conn.first_burst):
        assert any(b[0] & 0x3F == Op.REJECT for b in d.sent)
    d.still_answers()


def _data_out(itt: int, ttt: int, datasn: int, offset: int, data: bytes, final: bool) -> bytes:
    hdr = new_header(Op.DATA_OUT, 0x80 if final else 0, itt=itt, data_length=len(data))
    put_u32(hdr, 20, ttt)
    put_u32(hdr, 36, datasn)
    put_u32(hdr, 40, offset)
    return bytes(hdr) + data + bytes(padded(len(data)) - len(data))


@FUZZ
@given(st.data())
def test_wrong_data_out_for_a_real_write(data: st.DataObject) -> None:
    """A write waiting for R2T data gets Data-Out with wrong tags, offsets and DataSNs."""
    d = Driver.logged_in()
    itt = d.next_itt()
    edtl = data.draw(st.sampled_from([512, 4096, 20000, 70000]))
    hdr = new_header(Op.SCSI_COMMAND, 0xA1, itt=itt)
    put_u32(hdr, 20, edtl)
    put_u32(hdr, 24, d.conn.session.exp_cmdsn)  # type: ignore[union-attr]
    hdr[32:42] = WRITE10
    d.feed(bytes(hdr), [])
    r2ts = [b for b in d.sent if b[0] & 0x3F == Op.R2T]
    ttts = [struct.unpack_from(">I", b, 20)[0] for b in r2ts]
    chunks = data.draw(chunkings)
    for _ in range(data.draw(st.integers(1, 6))):
        ttt = data.draw(st.one_of(st.sampled_from([*ttts, 0xFFFFFFFF]), u32s))
        pdu = _data_out(
            data.draw(st.one_of(st.just(itt), u32s)),
            ttt,
            data.draw(st.one_of(st.integers(0, 3), u32s)),
            data.draw(st.one_of(st.sampled_from([0, 512, edtl - 512, edtl]), u32s)),
            bytes(data.draw(st.integers(0, 9000))),
            data.draw(st.booleans()),
        )
        d.feed(pdu, chunks)
        if d.closed:
            break
    d.still_answers()


# -- text requests -----------------------------------------------------------------------
key_names = st.one_of(
    st.sampled_from(sorted(KEYS)),
    st.sampled_from(["X-vendor", "X#ext", "Bogus", "SendTargets"]),
    st.text(min_size=1, max_size=70).filter(lambda k: "=" not in k and "\0" not in k),
)
key_values = st.one_of(
    st.sampled_from(
        [
            "Yes",
            "No",
            "None",
            "CRC32C",
            "All",
            "",
            "0",
            "512",
            "8192",
            "16777215",
            "16777216",
            "0x10",
            "0x",
            "0X1F",
            "-1",
            "99999999999999999999999",
            "Reject",
            "Irrelevant",
            "NotUnderstood",
            "CRC32C,None",
            "5",
            "0xzz",
            "0b====",
            "0b" + "QUJD",
        ]
    ),
    st.text(max_size=40).filter(lambda v: "\0" not in v),
    st.text(alphabet="0123456789", min_size=4000, max_size=5000),
)
key_texts = st.one_of(
    st.lists(st.tuples(key_names, key_values), max_size=8).map(
        lambda kv: b"".join(f"{k}={v}".encode() + b"\0" for k, v in kv)
    ),
    st.binary(max_size=300),
)


@FUZZ
@given(st.data())
def test_text_requests(data: st.DataObject) -> None:
    discovery = data.draw(st.booleans())
    d = Driver.logged_in(**({"SessionType": "Discovery"} if discovery else {}))
    chunks = data.draw(chunkings)
    last_ttt = 0xFFFFFFFF
    for _ in range(data.draw(st.integers(1, 5))):
        text = data.draw(key_texts)
        flags = data.draw(st.sampled_from([0x80, 0x40, 0xC0, 0x00]))
        itt = data.draw(st.sampled_from([1, 2, 0xFFFFFFFF]))
        hdr = new_header(Op.TEXT_REQUEST | 0x40, flags, itt=itt, data_length=len(text))
        put_u32(hdr, 20, data.draw(st.sampled_from([0xFFFFFFFF, last_ttt, 1, 7])))
        put_u32(hdr, 24, d.conn.session.exp_cmdsn)  # type: ignore[union-attr]
        before = len(d.sent)
        d.feed(bytes(hdr) + text + bytes(padded(len(text)) - len(text)), chunks)
        if d.closed:
            break
        answers = d.sent[before:]
        # Every text request is answered: a Text Response or a Reject.
        assert answers and answers[-1][0] & 0x3F in (Op.TEXT_RESPONSE, Op.REJECT)
        last_ttt = struct.unpack_from(">I", answers[-1], 20)[0]
    d.still_answers()


# -- login phase ----------------------------------------------------------------------------
CHAP_SECRET = Secret("fuzzuser", "fuzz-secret-123")
MUTUAL = Secret("fuzztarget", "target-secret-456")


def chap_config(mutual: bool) -> Settings:
    base = DEFAULT_SETTINGS
    target = TargetSettings(
        base.targets[0].name,
        chap=CHAP_SECRET,
        mutual_chap=MUTUAL if mutual else None,
    )
    return Settings(targets=(target,))


login_keys = st.fixed_dictionaries(
    {},
    optional={
        "InitiatorName": st.one_of(st.just("iqn.2026-11.test:fuzz"), key_values),
        "TargetName": st.one_of(st.just(DEFAULT_SETTINGS.targets[0].name), key_values),
        "SessionType": st.sampled_from(["Normal", "Discovery", "Bogus", ""]),
        "AuthMethod": st.sampled_from(["None", "CHAP", "CHAP,None", "SRP", "", "KRB5,CHAP"]),
        "CHAP_A": st.sampled_from(["5", "7,5", "7", "", "x"]),
        "CHAP_N": st.sampled_from(["fuzzuser", "other", ""]),
        "CHAP_R": st.sampled_from(["0x" + "00" * 16, "0x", "0b", "0bAAAA", "zz", "0x1", ""]),
        "CHAP_I": st.sampled_from(["0", "255", "256", "-1", "0x", "0xff", "x"]),
        "CHAP_C": st.sampled_from(["0x" + "11" * 16, "0x", "0b", "0b!!", "0x" + "ab" * 1100]),
        "MaxRecvDataSegmentLength": key_values,
        "MaxBurstLength": key_values,
        "FirstBurstLength": key_values,
        "HeaderDigest": key_values,
        "DataDigest": key_values,
        "MaxConnections": key_values,
        "InitialR2T": key_values,
        "ErrorRecoveryLevel": key_values,
        "IFMarkInt": key_values,
        "SendTargets": key_values,
        "TargetAlias": key_values,
    },
)


@st.composite
def login_requests(draw: st.DrawFn, step: int) -> tuple[bytes, Pdu]:
    flags = draw(
        st.one_of(
            st.sampled_from([0x87, 0x81, 0x83, 0x04, 0x00, 0x40, 0xC7, 0x8F, 0x85, 0x88]),
            st.integers(0, 255),
        )
    )
    hdr = new_header(Op.LOGIN_REQUEST | 0x40, flags, itt=step + 1)
    hdr[2] = draw(st.sampled_from([0, 0, 1, 0xFF]))
    hdr[3] = draw(st.sampled_from([0, 0, 1, 0xFF]))
    hdr[8:14] = draw(st.sampled_from([ISID, bytes(6)]))
    hdr[14:16] = draw(st.sampled_from([0, 0, 1, 0xFFFF])).to_bytes(2, "big")
    hdr[20:22] = draw(st.sampled_from([0, 1])).to_bytes(2, "big")
    put_u32(hdr, 24, draw(u32s))
    put_u32(hdr, 28, draw(u32s))
    text = draw(st.one_of(login_keys.map(lambda kv: keys(**kv)), key_texts))
    hdr[5:8] = len(text).to_bytes(3, "big")
    return bytes(hdr), Pdu(bytes(hdr), b"", text)


def _assert_login_response(reply: bytes) -> None:
    assert reply[0] & 0x3F == Op.LOGIN_RESPONSE
    assert reply[36] in (0, 1, 2, 3), f"status class {reply[36]}"
    assert len(reply) == BHS_LEN + padded(int.from_bytes(reply[5:8], "big"))


@FUZZ
@given(st.data())
def test_login_machine_answers_every_request(data: st.DataObject) -> None:
    chap = data.draw(st.sampled_from([None, False, True]))
    config = DEFAULT_SETTINGS if chap is None else chap_config(chap)
    sessions = SessionTable()
    machine = LoginMachine(
        config, PortalSettings(), sessions, random_bytes=lambda n: bytes(range(1, n + 1))
    )
    for step in range(data.draw(st.integers(1, 6))):
        _, pdu = data.draw(login_requests(step))
        if data.draw(st.integers(0, 4)) == 0 and chap is not None:
            # A correct CHAP response now and then, so the later stages get reached.
            good = chap_response(1, CHAP_SECRET.secret.encode(), bytes(range(2, 18)))
            text = keys(CHAP_N=CHAP_SECRET.user, CHAP_R="0x" + good.hex())
            pdu = Pdu(pdu.bhs[:5] + len(text).to_bytes(3, "big") + pdu.bhs[8:], b"", text)
        result = machine.receive(pdu)
        for reply in result.replies:
            _assert_login_response(reply)
        if result.close:
            assert len(result.replies) <= 1
            assert all(r[36] != 0 for r in result.replies)
            assert machine.receive(pdu).close  # a refused login stays refused
            return
        if result.done is not None:
            assert result.replies[-1][36] == 0
            return
        assert result.replies, "a login request went unanswered"


@FUZZ
@given(st.data())
def test_login_bytes_through_the_connection(data: st.DataObject) -> None:
    """Before login: only Login Responses come back; a failure status closes."""
    config = DEFAULT_SETTINGS
    sessions = SessionTable()
    d = Driver(Connection(config, PortalSettings(), sessions), sessions)
    chunks = data.draw(chunkings)
    for step in range(data.draw(st.integers(1, 4))):
        if data.draw(st.integers(0, 5)) == 0:
            raw = data.draw(st.binary(max_size=200))
        else:
            raw, _ = data.draw(login_requests(step))
            raw += data.draw(key_texts)
            raw = raw[:5] + (len(raw) - BHS_LEN).to_bytes(3, "big") + raw[8:]
            raw += bytes(padded(len(raw)) - len(raw))
        d.feed(raw, chunks)
        if d.closed or d.conn.phase is not Phase.LOGIN:
            break
    for bhs in d.sent:
        assert bhs[0] & 0x3F == Op.LOGIN_RESPONSE
        assert bhs[36] in (0, 1, 2, 3)
        if bhs[36]:
            assert d.closed
    d.still_answers()
