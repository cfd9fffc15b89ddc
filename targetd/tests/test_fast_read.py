"""targetd.fast_read against the full path, byte for byte.

Two daemons' shells side by side, built as the daemon builds them (default configuration,
the pair manager, the asyncio shell under uvloop, a transport that keeps what it is given):
one answers every command through the full path, the other with the fast READ
(``TARGETD_FAST_READ=0`` and the default). Both are fed the same PDUs one socket read at a
time; after each, what each wrote must be the same bytes, and at the end the sequence
numbers, the LUN's metrics and the receive buffer must agree. Each case also says whether
the fast READ served it, so a condition that should send a command the full way is checked
to do so, and the plain case is checked to be served."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import crc32c
import pytest
import uvloop

from backing.pairs import PairManager
from scsi.activity import COMMANDS
from scsi.sense import Reason
from targetd import fast_read
from targetd.config import Portal, default_config
from targetd.iscsi.pdu import Op, new_header, put_u32
from targetd.luns import build_targets, close_targets
from targetd.operations import Operations
from targetd.pairs import pair_settings
from targetd.server import IscsiConnection, TargetServer

# The fast READ as the shell calls it, and its loop over several PDUs fed every case alone
# too: each condition is checked in both.
SERVES = [
    pytest.param(fast_read.serve, id="serve"),
    pytest.param(fast_read.serve_several, id="serve_several"),
]
FINAL, READ, WRITE = 0x80, 0x40, 0x20
SIMPLE, ORDERED, HEAD_OF_QUEUE, ACA = 1, 2, 3, 4


class KeepingTransport:
    """uvloop's transport as the shell uses it, keeping every write."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.buffered = 0

    def writelines(self, items: list[Any]) -> None:
        self.out.append(b"".join(bytes(b) for b in items))

    def write(self, data: Any) -> None:
        self.out.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int = 0, low: int = 0) -> None: ...

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def take(self) -> bytes:
        out, self.out = self.out, []
        return b"".join(out)


class Side:
    """One daemon's objects and one logged-in connection, answering with ``serve``."""

    def __init__(self, state_dir: Path, serve: Callable[..., bool] | None) -> None:
        self.config = default_config(state_dir)
        self.pairs = PairManager(self.config.state_dir, pair_settings(self.config))
        self.targets = build_targets(self.config, self.pairs)
        self.server = TargetServer(self.config, self.targets)
        self.shell = IscsiConnection(self.server, self.config.portals[0] if
                                     self.config.portals else Portal())  # fmt: skip
        self.served = 0
        if serve is None:
            self.shell._fast = None
        else:

            def counted(shell: IscsiConnection, nbytes: int) -> bool:
                done = serve(shell, nbytes)
                self.served += done
                return done

            self.shell._fast = counted
        self.transport = KeepingTransport()

    async def start(self, digests: bool) -> None:
        await self.pairs.start()
        self.shell.connection_made(self.transport)  # type: ignore[arg-type]
        text = b"".join(
            f"{k}={v}".encode() + b"\0"
            for k, v in {
                "InitiatorName": "iqn.2026-11.org.targetd.test:fast-read",
                "TargetName": self.config.targets[0].name,
                "SessionType": "Normal",
                "HeaderDigest": "CRC32C" if digests else "None",
                "DataDigest": "CRC32C" if digests else "None",
                "MaxRecvDataSegmentLength": "262144",
                "ImmediateData": "Yes",
                "InitialR2T": "No",
                "FirstBurstLength": "262144",
                "MaxBurstLength": "16776192",
            }.items()
        )
        hdr = new_header(Op.LOGIN_REQUEST | 0x40, 0x87, itt=1, data_length=len(text))
        hdr[8:14] = bytes([0x40, 0, 0, 0, 0, 1])
        put_u32(hdr, 24, 1)
        await self.feed(bytes(hdr) + text + bytes(-len(text) % 4))
        reply = self.transport.take()
        assert reply[0] & 0x3F == Op.LOGIN_RESPONSE and reply[36] == 0

    async def feed(self, raw: bytes) -> None:
        """``raw`` as one socket read (as uvloop hands it over), then the loop's turn."""
        view = memoryview(raw)
        while view:
            buf = self.shell.get_buffer(-1)
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            self.shell.buffer_updated(n)
        for _ in range(3):
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self.shell.connection_lost(None)
        await self.pairs.stop()
        close_targets(self.targets)

    def state(self) -> dict[str, Any]:
        conn = self.shell.conn
        assert conn.session is not None
        return {
            "stat_sn": conn.stat_sn,
            "exp_cmdsn": conn.session.exp_cmdsn,
            "max_cmdsn": conn.session.max_cmdsn,
            "in_flight": conn.session.in_flight,
            "tasks": sorted(conn.tasks),
            "failed_itts": list(conn._failed_itts),
            "heard": (conn.now, conn.last_heard, conn._ping_sent_at),
            "receiver": (conn.receiver._start, conn.receiver._end),
            "lun_stats": {
                lun: (s.ops, s.bytes, s.errors, s.attentions)
                for lun, s in (self.shell.runtime.stats.items() if self.shell.runtime else ())
            },
        }


def command(
    itt: int,
    cmdsn: int,
    cdb: bytes,
    *,
    edtl: int,
    flags: int = FINAL | READ | SIMPLE,
    lun: int = 0,
    opcode: int = Op.SCSI_COMMAND,
    data: bytes = b"",
    digests: bool = False,
) -> bytes:
    hdr = new_header(opcode, flags, itt=itt, data_length=len(data))
    hdr[8:16] = bytes([lun >> 8 & 0x3F, lun & 0xFF]) + bytes(6)
    put_u32(hdr, 20, edtl)
    put_u32(hdr, 24, cmdsn)
    hdr[32:48] = cdb.ljust(16, b"\0")
    padded = data + bytes(-len(data) % 4)
    if not digests:
        return bytes(hdr) + padded
    out = bytes(hdr) + crc32c.crc32c(hdr).to_bytes(4, "little")
    if data:
        out += padded + crc32c.crc32c(padded).to_bytes(4, "little")
    return out


def read16(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", 0x88, flags, lba, blocks, 0, 0)


def read10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x28, flags, lba, 0, blocks, 0)


def write16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, 0, lba, blocks, 0, 0)


class Pair:
    """The full path and the fast READ, fed alike."""

    def __init__(self, tmp: Path, serve: Callable[..., bool]) -> None:
        self.full = Side(tmp / "full", None)
        self.fast = Side(tmp / "fast", serve)
        self.itt = 100
        self.cmdsn = 1
        self.digests = False
        self.clock = 1e6

    async def start(self, digests: bool = False) -> None:
        self.digests = digests
        for side in (self.full, self.fast):
            await side.start(digests)
        # The first command of a new nexus gets its POWER ON unit attention: the full path.
        reply, served = await self.read(read16(0, 8))
        assert not served and status_of(reply) == (Op.SCSI_RESPONSE, 0x02)
        # The data the reads read back: the same on both, not zeros.
        payload = os.urandom(64 * 1024)
        await self.send(command(self.itt, self.cmdsn, write16(0, 128), edtl=len(payload),
                                flags=FINAL | WRITE | SIMPLE, data=payload,
                                digests=digests))  # fmt: skip

    async def send(self, raw: bytes, *, step: bool = True) -> tuple[bytes, bool]:
        """Feed both; returns the common answer and whether the fast side served it."""
        before = self.fast.served
        self.clock += 1.0
        started = []
        for side in (self.full, self.fast):
            side.server.now = self.clock  # when the shell hears it, the same on both
            count = COMMANDS.started
            await side.feed(raw)
            started.append(COMMANDS.started - count)
        # A read sent to a worker thread answers later: up to 10 s, for a host so busy
        # that the thread waits for a core (the loop ends as soon as both have answered).
        for _ in range(2000):
            sides = (self.full, self.fast)
            if all(s.transport.out and not s.shell._running for s in sides):
                break
            await asyncio.sleep(0.005)
        full, fast = self.full.transport.take(), self.fast.transport.take()
        assert fast == full
        assert self.fast.state() == self.full.state()
        assert started[0] == started[1]  # the commands counted (background copies yield)
        if step:
            self.itt += 1
            self.cmdsn += 1
        return full, self.fast.served > before

    async def read(self, cdb: bytes, **kw: Any) -> tuple[bytes, bool]:
        kw.setdefault("edtl", 4096)
        kw.setdefault("digests", self.digests)
        return await self.send(command(self.itt, self.cmdsn, cdb, **kw))

    async def stop(self) -> None:
        assert self.fast.state() == self.full.state()
        for side in (self.full, self.fast):
            await side.stop()


def side_by_side(
    digests: bool = False,
) -> Callable[[Callable[[Pair], Awaitable[None]]], Callable[[Path, Any], None]]:
    """A test of the full path and the fast READ fed alike: ``body`` gets the started
    :class:`Pair` (for each fast READ of ``SERVES``), and the pair is checked and stopped
    after it."""

    def wrap(body: Callable[[Pair], Awaitable[None]]) -> Callable[[Path, Any], None]:
        @pytest.mark.parametrize("serve", SERVES)
        def test(tmp_path: Path, serve: Any) -> None:
            async def main() -> None:
                pair = Pair(tmp_path, serve)
                await pair.start(digests)
                try:
                    await body(pair)
                finally:
                    await pair.stop()

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())

        test.__name__ = test.__qualname__ = body.__name__
        test.__doc__ = body.__doc__
        return test

    return wrap


def status_of(reply: bytes) -> tuple[int, int]:
    """(opcode, status) of the last PDU of a reply with one Data-In or SCSI Response."""
    return reply[0] & 0x3F, reply[3]


async def served(p: Pair, cdb: bytes = read16(0, 8), **kw: Any) -> bytes:
    """A READ both sides answer alike, the fast side with the fast READ; the answer."""
    reply, fast = await p.read(cdb, **kw)
    assert fast, (cdb.hex(), kw)
    return reply


async def full_way(p: Pair, cdb: bytes = read16(0, 8), **kw: Any) -> bytes:
    """A command both sides answer alike, through the full path; the answer."""
    reply, fast = await p.read(cdb, **kw)
    assert not fast, (cdb.hex(), kw)
    return reply


@side_by_side()
async def test_plain_reads_are_served_and_answer_alike(p: Pair) -> None:
    # A keepalive ping outstanding: hearing from the initiator ends it.
    for side in (p.full, p.fast):
        side.shell.conn._ping_sent_at = 1.0
    for cdb, edtl in (
        (read16(0, 8), 4096),
        (read10(8, 8), 4096),
        (read16(3, 1), 512),
        (read10(16, 16), 8192),
        (read16(1, 127), 127 * 512),
    ):
        reply = await served(p, cdb, edtl=edtl)
        assert status_of(reply) == (Op.DATA_IN, 0) and reply[1] == 0x81
        assert len(reply) == 48 + edtl
    # Untagged and ACA commands run as SIMPLE ones do.
    for attribute in (0, ACA):
        await served(p, flags=FINAL | READ | attribute)
    # ITTs reused after completion, a CmdSN wrapping past 2**32: still the plain case.
    p.itt = 100
    await served(p)


@side_by_side()
async def test_what_the_full_path_answers_otherwise_is_not_served(p: Pair) -> None:
    # Residuals: the expected length is not the CDB's.
    await full_way(p, edtl=2048)
    await full_way(p, edtl=8192)
    # Out of range, a zero length, protection asked, beyond the transfer limit.
    await full_way(p, read16((1 << 30) // 512 - 4, 8))
    await full_way(p, read16(0, 0), edtl=0)
    await full_way(p, read16(0, 8, flags=0x20))
    await full_way(p, read10(0, 8, flags=0x40))
    await full_way(p, read16(0, 0xFFFFFFF0), edtl=4096)
    # Ordered and head-of-queue: the task set orders them.
    await full_way(p, flags=FINAL | READ | ORDERED)
    await full_way(p, flags=FINAL | READ | HEAD_OF_QUEUE)
    # Immediate delivery, a write flag, no read flag.
    await full_way(p, opcode=Op.SCSI_COMMAND | 0x40)
    p.cmdsn -= 1  # an immediate command takes no CmdSN
    await full_way(p, flags=FINAL | READ | WRITE | SIMPLE)
    await full_way(p, flags=FINAL | SIMPLE)
    # Another opcode (READ(12), READ(6), INQUIRY), a LUN that is not a block LU or none.
    await full_way(p, bytes([0xA8, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]))
    await full_way(p, bytes([0x08, 0, 0, 0, 8, 0]))
    await full_way(p, bytes([0x12, 0, 0, 0, 36, 0]), edtl=36)
    await full_way(p, lun=2)
    await full_way(p, lun=7)
    # Large enough for the pool's buffers or sendfile.
    await full_way(p, read16(0, 128), edtl=65536)
    # Two commands in one socket read, one of them not a READ: both the full way.
    reply = await batch(p, [read16(0, 8), bytes([0x12, 0, 0, 0, 36, 0])], served=False)
    assert len(reply) == 48 + 4096 + 48 + 36
    # A CmdSN ahead of the window's start waits for the one before it.
    reply, fast = await p.send(command(p.itt, p.cmdsn + 1, read16(0, 8), edtl=4096), step=False)
    assert not fast and reply == b""
    reply, fast = await p.send(command(p.itt + 1, p.cmdsn, read16(0, 8), edtl=4096), step=False)
    assert not fast and len(reply) == 2 * (48 + 4096)
    p.itt, p.cmdsn = p.itt + 2, p.cmdsn + 2
    # And the plain case again, served.
    await served(p)


def replies(raw: bytes) -> list[bytes]:
    """The PDUs of an answer of Data-In and SCSI Response PDUs (no digests)."""
    out = []
    while raw:
        length = 48 + -(-int.from_bytes(raw[5:8], "big") // 4) * 4
        out.append(raw[:length])
        raw = raw[length:]
    return out


async def batch(p: Pair, cdbs: list[bytes], *, served: bool, **kw: Any) -> bytes:
    """``cdbs`` as consecutive commands (ITT and CmdSN one more each) in one socket read,
    READs of the length their CDB asks; the answer, served by the fast READ or not."""
    raw = b""
    for i, cdb in enumerate(cdbs):
        blocks = {0x88: cdb[10:14], 0x28: cdb[7:9]}.get(cdb[0], b"\x00")
        edtl = kw.pop("edtl", None) or int.from_bytes(blocks, "big") * 512 or 36
        raw += command(p.itt + i, (p.cmdsn + i) & 0xFFFFFFFF, cdb, edtl=edtl, **kw)
    before = p.fast.served
    reply, _ = await p.send(raw, step=False)
    # Served: by one call, the whole socket read at once.
    assert p.fast.served - before == (1 if served else 0), [cdb.hex() for cdb in cdbs]
    p.itt, p.cmdsn = p.itt + len(cdbs), (p.cmdsn + len(cdbs)) & 0xFFFFFFFF
    return reply


@side_by_side()
async def test_reads_of_one_socket_read_are_served_together_and_answer_alike(p: Pair) -> None:
    """Several plain READs in one socket read: all served, each answer stamped as the full
    path stamps it (StatSN one more each; MaxCmdSN a slot wider each, as every command of
    the batch was counted in flight before the first answer)."""
    await served(p)  # after the start's 64 KiB WRITE the receiver asks for one header
    for count in (2, 3, 32):
        reply = await batch(p, [read16(8 * i, 8) for i in range(count)], served=True)
        pdus = replies(reply)
        assert [len(pdu) for pdu in pdus] == [48 + 4096] * count
        stat_sns = [int.from_bytes(pdu[24:28], "big") for pdu in pdus]
        max_cmdsns = [int.from_bytes(pdu[32:36], "big") for pdu in pdus]
        assert stat_sns == list(range(stat_sns[0], stat_sns[0] + count))
        assert max_cmdsns == list(range(max_cmdsns[0], max_cmdsns[0] + count))
    # READ(10) and READ(16), two LUNs, one length and another.
    await full_way(p, lun=1)  # its POWER ON unit attention
    raw = b"".join(
        command(p.itt + i, p.cmdsn + i, cdb, edtl=edtl, lun=lun)
        for i, (cdb, edtl, lun) in enumerate(
            ((read10(0, 8), 4096, 0), (read16(16, 1), 512, 1), (read16(8, 16), 8192, 0))
        )
    )
    before = p.fast.served
    reply, _ = await p.send(raw, step=False)
    assert p.fast.served == before + 1 and len(reply) == 3 * 48 + 4096 + 512 + 8192
    p.itt, p.cmdsn = p.itt + 3, p.cmdsn + 3
    # A WRITE waiting for the rest of its data holds a slot of the window meanwhile.
    await p.send(command(p.itt, p.cmdsn, write16(0, 16), edtl=8192, data=bytes(4096),
                         flags=WRITE | SIMPLE))  # fmt: skip
    assert p.fast.shell.conn.session.in_flight == 1  # type: ignore[union-attr]
    await batch(p, [read16(0, 8), read16(8, 8)], served=True)
    # A batch of more commands than the window has room for: answered all the same.
    await batch(p, [read16(i % 64, 1) for i in range(200)], served=True)
    # CmdSNs wrapping past 2**32 inside a batch.
    p.cmdsn = 0xFFFFFFFF
    for side in (p.full, p.fast):
        side.shell.conn.session.exp_cmdsn = p.cmdsn  # type: ignore[union-attr]
    await batch(p, [read16(0, 8), read16(8, 8), read16(16, 8)], served=True)


@side_by_side()
async def test_a_batch_that_is_not_all_plain_goes_the_full_way(p: Pair) -> None:
    await served(p)  # after the start's 64 KiB WRITE the receiver asks for one header
    # The same ITT twice: the second is refused as in use, by the full path.
    raw = command(p.itt, p.cmdsn, read16(0, 8), edtl=4096) + command(
        p.itt, p.cmdsn + 1, read16(8, 8), edtl=4096
    )
    reply, fast = await p.send(raw, step=False)
    assert not fast and [pdu[0] & 0x3F for pdu in replies(reply)] == [Op.REJECT, Op.DATA_IN]
    p.itt += 2
    p.cmdsn = p.fast.shell.conn.session.exp_cmdsn  # type: ignore[union-attr]
    # A CmdSN missing inside the batch: the one after the gap waits for it.
    raw = command(p.itt, p.cmdsn, read16(0, 8), edtl=4096) + command(
        p.itt + 1, p.cmdsn + 2, read16(8, 8), edtl=4096
    )
    reply, fast = await p.send(raw, step=False)
    assert not fast and len(replies(reply)) == 1
    reply, fast = await p.send(command(p.itt + 2, p.cmdsn + 1, read16(0, 8), edtl=4096),
                               step=False)  # fmt: skip
    assert not fast and len(replies(reply)) == 2
    p.itt, p.cmdsn = p.itt + 3, p.cmdsn + 3
    # One READ the full path has to answer otherwise (out of range, ORDERED, a tape LUN).
    await batch(p, [read16(0, 8), read16((1 << 30) // 512 - 4, 8)], served=False)
    await batch(p, [read16(0, 8), read16(8, 8)], served=False, flags=FINAL | READ | ORDERED)
    raw = command(p.itt, p.cmdsn, read16(0, 8), edtl=4096) + command(
        p.itt + 1, p.cmdsn + 1, read16(0, 8), edtl=4096, lun=2
    )
    reply, fast = await p.send(raw, step=False)
    assert not fast
    p.itt, p.cmdsn = p.itt + 2, p.cmdsn + 2
    # A WRITE behind a READ.
    raw = command(p.itt, p.cmdsn, read16(0, 8), edtl=4096) + command(
        p.itt + 1, p.cmdsn + 1, write16(0, 8), edtl=4096, data=bytes(4096),
        flags=FINAL | WRITE | SIMPLE,
    )  # fmt: skip
    reply, fast = await p.send(raw, step=False)
    assert not fast and len(replies(reply)) == 2
    p.itt, p.cmdsn = p.itt + 2, p.cmdsn + 2
    # The second range not in the page cache (LUN 0's written blocks; LUN 1's are holes,
    # read without the disk): neither is served here, both are answered.
    await full_way(p, lun=1)  # LUN 1's POWER ON unit attention
    for side in (p.full, p.fast):
        fd = side.shell.runtime.scsi.luns[0].store.base._fd  # type: ignore[union-attr]
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    raw = command(p.itt, p.cmdsn, read16(0, 8), edtl=4096, lun=1) + command(
        p.itt + 1, p.cmdsn + 1, read16(0, 8), edtl=4096
    )
    reply, fast = await p.send(raw, step=False)
    assert not fast and [len(pdu) for pdu in replies(reply)] == [48 + 4096] * 2
    p.itt, p.cmdsn = p.itt + 2, p.cmdsn + 2
    # A PDU cut by the socket read: the whole one the full way; the one it completes later
    # is served.
    raw = command(p.itt, p.cmdsn, read16(0, 8), edtl=4096) + command(
        p.itt + 1, p.cmdsn + 1, read16(8, 8), edtl=4096
    )
    reply, fast = await p.send(raw[:60], step=False)
    assert not fast and len(replies(reply)) == 1
    reply, fast = await p.send(raw[60:], step=False)
    assert fast and len(replies(reply)) == 1
    p.itt, p.cmdsn = p.itt + 2, p.cmdsn + 2
    # And a plain batch again, served.
    await batch(p, [read16(0, 8), read16(8, 8)], served=True)


@side_by_side()
async def test_lu_state_sends_reads_the_full_way(p: Pair) -> None:
    lus = [side.shell.runtime.scsi.luns[0] for side in (p.full, p.fast)]  # type: ignore[union-attr]
    # A RESERVE(6) held by this nexus: the READ is allowed, by the full path.
    reply = await full_way(p, bytes([0x16, 0, 0, 0, 0, 0]), edtl=0)
    assert status_of(reply) == (Op.SCSI_RESPONSE, 0)
    assert status_of(await full_way(p)) == (Op.DATA_IN, 0)
    await full_way(p, bytes([0x17, 0, 0, 0, 0, 0]), edtl=0)  # RELEASE(6)
    await served(p)
    # A unit attention pending (a mode page changed by another nexus, say).
    for lu in lus:
        lu.raise_unit_attention(Reason.MODE_PARAMETERS_CHANGED)
    assert status_of(await full_way(p)) == (Op.SCSI_RESPONSE, 0x02)
    # The task set gated (something waits in it).
    for lu in lus:
        lu.task_set.gated = True
    assert status_of(await full_way(p)) == (Op.DATA_IN, 0)
    for lu in lus:
        lu.task_set.gated = False
    # An ITT whose write failed before its data was in: its Data-Out is dropped quietly
    # until the ITT is used again, as by this READ.
    for side in (p.full, p.fast):
        side.shell.conn._failed_itts.update({p.itt: None, p.itt + 1000: None})
    await served(p)
    assert list(p.fast.shell.conn._failed_itts) == [p.itt - 1 + 1000]
    # The page cache does not hold the range: the full path reads it on a worker.
    for lu in lus:
        fd = lu.store.base._fd
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    assert status_of(await full_way(p)) == (Op.DATA_IN, 0)
    await served(p)


@side_by_side(digests=True)
async def test_digests_send_reads_the_full_way(p: Pair) -> None:
    assert (await full_way(p))[0] & 0x3F == Op.DATA_IN


def test_a_lun_removed_by_a_reload_is_not_kept_by_the_connection(tmp_path: Path) -> None:
    """The fast READ remembers a plan per LU it served; a LUN or target that a reload
    removes must not stay referenced by a connection that served it (the LU, its file, its
    volume)."""

    async def main() -> None:
        side = Side(tmp_path, fast_read.serve)
        await side.start(digests=False)
        try:
            await side.feed(command(100, 1, read16(0, 8), edtl=4096, lun=1))  # POWER ON UA
            await side.feed(command(101, 2, read16(0, 8), edtl=4096, lun=1))
            assert side.served == 1
            lu = side.shell.runtime.scsi.luns[1]  # type: ignore[union-attr]
            assert lu in side.shell._fast_plans
            target = side.config.targets[0]
            without = replace(target, luns=tuple(n for n in target.luns if n.lun != 1))
            new = replace(side.config, targets=(without,))
            ops = Operations(side.server, loader=lambda: new)
            applied = ops.reload()["applied"]
            assert applied == [
                f"target {target.name}: lun 1 removed: its sessions are asked to log out"
            ]
            assert lu not in side.shell._fast_plans
            # A target removed: its sessions lose their access, and whatever they knew.
            for itt in range(102, 105):  # POWER ON, then REPORTED LUNS DATA HAS CHANGED
                await side.feed(command(itt, itt - 99, read16(0, 8), edtl=4096))
            assert side.served == 2 and side.shell._fast_plans
            removed = replace(side.config, targets=())
            ops.loader = lambda: removed
            assert ops.reload()["applied"][0].startswith(f"target {target.name} removed")
            assert not side.shell._fast_plans
        finally:
            await side.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
