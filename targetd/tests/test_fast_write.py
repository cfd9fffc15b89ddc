"""targetd.fast_write against the full path, byte for byte.

The harness of test_fast_read.py: two daemons' shells side by side, built as the daemon
builds them, one answering every WRITE through the full path (``TARGETD_FAST_WRITE=0``),
the other with the fast WRITE; both fed the same PDUs one socket read at a time. After each
read both wrote the same bytes and hold the same sequence numbers, tasks, failed ITTs,
keepalive clock, receive buffer and LUN metrics, and at the end both files hold the same
bytes. Each case says whether the fast WRITE served it: the plain cases must be served, and
each condition that should send a write the full way must do so with the same answer."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from backing.sparse_file import SparseFile
from backing.write_now import write_now_of
from scsi.sense import Reason
from targetd import fast_write
from targetd.iscsi.pdu import Op, new_header, put_u32
from targetd.server import IscsiConnection
from targetd.tests.test_fast_read import (
    ACA,
    FINAL,
    HEAD_OF_QUEUE,
    ORDERED,
    READ,
    SIMPLE,
    WRITE,
    Pair,
    Side,
    command,
    read16,
    status_of,
)

WRITE_FLAGS = FINAL | WRITE | SIMPLE


def write16(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, flags, lba, blocks, 0, 0)


def write10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, flags, lba, 0, blocks, 0)


class WriteSide(Side):
    """A daemon's shell whose READs all go the full way and whose WRITEs go through
    ``serve`` (None: the full path); ``served`` counts the commands it answered."""

    def __init__(self, state_dir: Path, serve: Callable[..., int] | None) -> None:
        super().__init__(state_dir, None)
        if serve is None:
            self.shell._fast_write = None
            return

        def counted(shell: IscsiConnection, nbytes: int) -> int:
            before = shell.conn.stat_sn
            left = serve(shell, nbytes)
            self.served += (shell.conn.stat_sn - before) & 0xFFFFFFFF
            return left

        self.shell._fast_write = counted


class WritePair(Pair):
    def __init__(self, tmp: Path, serve: Callable[..., int]) -> None:
        super().__init__(tmp, lambda shell, n: False)
        self.full = WriteSide(tmp / "full", None)
        self.fast = WriteSide(tmp / "fast", serve)

    async def start(self, digests: bool = False) -> None:
        await super().start(digests)
        # The 64 KiB write of the set-up came out of line, so the receiver reads one header
        # next: the full path's on both sides, and the reads after it whole again.
        reply, _ = await self.write(write16(0, 8), 4096)
        assert good(reply[:48])
        self.fast.served = 0

    def lus(self) -> list[Any]:
        return [side.shell.runtime.scsi.luns[0] for side in (self.full, self.fast)]  # type: ignore[union-attr]

    async def write(self, cdb: bytes, length: int, **kw: Any) -> tuple[bytes, int]:
        """One WRITE of ``length`` bytes of fresh data; the answer and how many the fast
        side served."""
        kw.setdefault("flags", WRITE_FLAGS)
        kw.setdefault("digests", self.digests)
        kw.setdefault("edtl", length)
        before = self.fast.served
        reply, _ = await self.send(command(self.itt, self.cmdsn, cdb, data=os.urandom(length),
                                           **kw))  # fmt: skip
        return reply, self.fast.served - before

    def batch(self, cdbs: list[bytes], blocks: int = 8) -> bytes:
        """Plain 4 KiB (``blocks``) writes with consecutive ITTs and CmdSNs, as one read."""
        raw = b"".join(
            command(
                self.itt + i,
                self.cmdsn + i,
                cdb,
                edtl=blocks * 512,
                flags=WRITE_FLAGS,
                data=os.urandom(blocks * 512),
            )
            for i, cdb in enumerate(cdbs)
        )
        self.itt += len(cdbs)
        self.cmdsn += len(cdbs)
        return raw

    def files_agree(self) -> None:
        full, fast = (os.pread(lu.store.base._fd, 4 << 20, 0) for lu in self.lus())
        assert full == fast


def run(test: Callable[[WritePair], Any], tmp: Path, digests: bool = False) -> None:
    async def main() -> None:
        pair = WritePair(tmp, fast_write.serve)
        await pair.start(digests)
        try:
            await test(pair)
            pair.files_agree()
        finally:
            await pair.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def good(reply: bytes, count: int = 1) -> bool:
    """``count`` SCSI Responses with GOOD status and nothing else."""
    return len(reply) == 48 * count and all(
        reply[i] == Op.SCSI_RESPONSE and reply[i + 3] == 0 for i in range(0, len(reply), 48)
    )


def test_plain_writes_are_served_and_answer_alike(tmp_path: Path) -> None:
    async def test(p: WritePair) -> None:
        for side in (p.full, p.fast):  # a keepalive ping outstanding: hearing ends it
            side.shell.conn._ping_sent_at = 1.0
        for cdb, length in (
            (write16(0, 8), 4096),
            (write10(8, 8), 4096),
            (write16(3, 1), 512),
            (write10(16, 16), 8192),
            (write16(1, 31), 31 * 512),  # under the receiver's out-of-line threshold
            (write16(0, 8, flags=0x10), 4096),  # DPO: a hint, as for the full path
        ):
            reply, served = await p.write(cdb, length)
            assert served == 1 and good(reply), cdb.hex()
        for attribute in (0, ACA):  # untagged and ACA run as SIMPLE ones do
            reply, served = await p.write(write16(0, 8), 4096, flags=FINAL | WRITE | attribute)
            assert served == 1 and good(reply)
        # Thirty in one socket read, as eight sessions at queue depth 32 send them: the
        # statuses carry the ExpCmdSN and MaxCmdSN the full path stamps after the batch.
        raw = p.batch([write16(lba * 8, 8) for lba in (5, 900, 3, 77, 12, 5) * 5])
        reply, _ = await p.send(raw, step=False)
        assert good(reply, 30) and p.fast.served == 8 + 30
        # Two whole writes and part of a third: the third is the full path's to finish.
        raw = p.batch([write16(0, 8), write16(8, 8), write16(16, 8)])
        reply, _ = await p.send(raw[: 2 * 4144 + 1000], step=False)
        assert good(reply, 2) and p.fast.served == 40
        reply, _ = await p.send(raw[2 * 4144 + 1000 :], step=False)
        assert good(reply) and p.fast.served == 40
        # A write whose rest is received out of line (the staging buffer is not where its
        # bytes land): the full path's, whatever the staging buffer holds past its end.
        raw = p.batch([write16(0, 8), write16(8, 8)])
        reply, _ = await p.send(raw[: 4144 + 100], step=False)
        assert good(reply) and p.fast.served == 41
        stale = command(p.itt, p.cmdsn - 1, write16(64, 1), edtl=512, flags=WRITE_FLAGS,
                        data=bytes(512))  # fmt: skip
        for side in (p.full, p.fast):
            rx = side.shell.conn.receiver
            rx._buf[rx._end : rx._end + len(stale)] = stale
        reply, _ = await p.send(raw[4144 + 100 :], step=False)
        assert good(reply) and p.fast.served == 41
        # The replies pile up unsent: reading stops until they are written, as after _pump.
        for side in (p.full, p.fast):
            side.transport.buffered = 17 << 20
        reply, served = await p.write(write16(0, 8), 4096)
        assert served == 1 and p.fast.shell._backpressure and p.full.shell._backpressure
        for side in (p.full, p.fast):
            side.transport.buffered = 0
            side.shell._backpressure = False
        # ITTs reused after completion.
        p.itt = 100
        reply, served = await p.write(write16(0, 8), 4096)
        assert served == 1

    run(test, tmp_path)


def test_what_the_full_path_answers_otherwise_is_not_served(tmp_path: Path) -> None:
    async def test(p: WritePair) -> None:

        async def full_way(cdb: bytes, length: int = 4096, **kw: Any) -> bytes:
            reply, served = await p.write(cdb, length, **kw)
            assert not served, (cdb.hex(), kw)
            return reply

        # FUA: on stable storage before GOOD, the full path's way.
        assert good(await full_way(write16(0, 8, flags=0x08)))
        assert good(await full_way(write10(0, 8, flags=0x08)))
        # Protection asked, zero blocks, a length other than the CDB's (residuals).
        await full_way(write16(0, 8, flags=0x20))
        await full_way(write16(0, 0), 0)
        await full_way(write16(0, 0), 4096)
        await full_way(write16(0, 4), 4096)
        await full_way(write16(0, 16), 4096)
        # Out of range, over the transfer limit, received out of line (16 KiB and more).
        await full_way(write16((1 << 30) // 512 - 4, 8))
        await full_way(write16(0, 0xFFFFFFF0), 4096)
        assert good(await full_way(write16(0, 32), 32 * 512))
        # Ordered and head-of-queue: the task set orders them.
        assert good(await full_way(write16(0, 8), flags=FINAL | WRITE | ORDERED))
        assert good(await full_way(write16(0, 8), flags=FINAL | WRITE | HEAD_OF_QUEUE))
        # Immediate delivery (no CmdSN taken), a read flag too, no final flag.
        await full_way(write16(0, 8), opcode=Op.SCSI_COMMAND | 0x40)
        p.cmdsn -= 1
        await full_way(write16(0, 8), flags=FINAL | READ | WRITE | SIMPLE)
        await full_way(write16(0, 8), flags=WRITE | SIMPLE)
        # Part of the data solicited: an R2T first.
        r2t_itt = p.itt
        reply, served = await p.send(command(p.itt, p.cmdsn, write16(0, 8), edtl=8192,
                                             flags=WRITE_FLAGS, data=bytes(4096)))  # fmt: skip
        assert not served and reply[0] & 0x3F == Op.R2T
        ttt = reply[20:24]
        # That ITT again (its R2T unanswered, in use): refused by the full path.
        reply, served = await p.send(command(p.itt - 1, p.cmdsn, write16(0, 8), edtl=4096,
                                             flags=WRITE_FLAGS, data=bytes(4096)))  # fmt: skip
        assert not served and reply[0] & 0x3F == Op.REJECT
        p.cmdsn -= 1  # a rejected command takes no CmdSN
        # Its Data-Out in two reads: the rest is received out of line, into the command's
        # buffer, and the fast WRITE stays out whatever the staging buffer holds past its end.
        data_out = new_header(Op.DATA_OUT, FINAL, itt=r2t_itt, data_length=4096)
        data_out[20:24] = ttt
        put_u32(data_out, 40, 4096)
        raw = bytes(data_out) + os.urandom(4096)
        reply, served = await p.send(raw[:148], step=False)
        assert not served and reply == b""
        stale = command(p.itt, p.cmdsn, write16(64, 1), edtl=512, flags=WRITE_FLAGS,
                        data=bytes(512))  # fmt: skip
        for side in (p.full, p.fast):
            rx = side.shell.conn.receiver
            rx._buf[rx._end : rx._end + len(stale)] = stale
        reply, served = await p.send(raw[148:], step=False)
        assert not served and good(reply)
        # Other opcodes (WRITE(12), WRITE(6), WRITE AND VERIFY(16)); a tape LUN, none.
        await full_way(bytes([0xAA, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]))
        await full_way(bytes([0x0A, 0, 0, 0, 8, 0]))
        await full_way(bytes([0x8E, 0, *bytes(8), 0, 0, 0, 8, 0, 0]))
        await full_way(write16(0, 8), lun=2)
        await full_way(write16(0, 8), lun=7)
        # A CmdSN ahead of its turn waits for the one before it.
        ahead = command(p.itt, p.cmdsn + 1, write16(0, 8), edtl=4096, flags=WRITE_FLAGS,
                        data=os.urandom(4096))  # fmt: skip
        reply, served = await p.send(ahead, step=False)
        assert not served and reply == b""
        reply, served = await p.send(command(p.itt + 1, p.cmdsn, write16(8, 8), edtl=4096,
                                             flags=WRITE_FLAGS, data=os.urandom(4096)),
                                     step=False)  # fmt: skip
        assert not served and good(reply, 2)
        p.itt, p.cmdsn = p.itt + 2, p.cmdsn + 2
        # An AHS (an expected bidirectional read length) before the data.
        ahs = command(p.itt, p.cmdsn, write16(0, 8), edtl=4096, flags=WRITE_FLAGS,
                      data=os.urandom(4096))  # fmt: skip
        ahs = ahs[:4] + b"\x02" + ahs[5:48] + struct.pack(">HBxI", 5, 2, 0) + ahs[48:]
        reply, served = await p.send(ahs)
        assert not served and good(reply)
        # One ITT twice in one read: the full path refuses the second (the first in flight).
        raw = p.batch([write16(0, 8), write16(8, 8)])
        raw = raw[:4144] + raw[4144:4160] + struct.pack(">I", p.itt - 2) + raw[4164:]
        reply, _ = await p.send(raw, step=False)
        assert reply[0] & 0x3F == Op.REJECT and good(reply[-48:])
        p.cmdsn -= 1
        # A write behind something else in the same read: all the full path's.
        raw = command(p.itt, p.cmdsn, read16(0, 8), edtl=4096)
        p.itt, p.cmdsn = p.itt + 1, p.cmdsn + 1
        reply, served = await p.send(raw + p.batch([write16(0, 8)]), step=False)
        assert not served and reply[0] & 0x3F == Op.DATA_IN and good(reply[-48:])
        # And the plain case again, served.
        reply, served = await p.write(write16(0, 8), 4096)
        assert served == 1

    run(test, tmp_path)


def test_connection_state_sends_writes_the_full_way(tmp_path: Path) -> None:
    async def test(p: WritePair) -> None:
        conns = [side.shell.conn for side in (p.full, p.fast)]
        # ImmediateData not negotiated: the data segment is a protocol error (a Reject).
        for conn in conns:
            conn.immediate_data = False
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and reply[0] & 0x3F == Op.REJECT
        p.cmdsn -= 1  # a rejected command takes no CmdSN
        for conn in conns:
            conn.immediate_data = True
        # More than FirstBurstLength immediate: the same.
        for conn in conns:
            conn.first_burst = 2048
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and reply[0] & 0x3F == Op.REJECT
        p.cmdsn -= 1
        for conn in conns:
            conn.first_burst = 262144
        # A command larger than the connection takes: refused by the full path.
        limit = conns[0]._max_command
        for conn in conns:
            conn._max_command = 2048
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and status_of(reply) == (Op.SCSI_RESPONSE, 0x02)
        for conn in conns:
            conn._max_command = limit
        # A write's data staged for an ITT (half received): everything waits its turn.
        for conn in conns:
            conn._write_buffers[9999] = (bytearray(512), None)
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and good(reply)
        for conn in conns:
            del conn._write_buffers[9999]
        # A failed ITT reused: forgotten, as the full path forgets it.
        for conn in conns:
            conn._failed_itts.update({p.itt: None, p.itt + 1000: None})
        reply, served = await p.write(write16(0, 8), 4096)
        assert served == 1
        assert list(p.fast.shell.conn._failed_itts) == [p.itt - 1 + 1000]

    run(test, tmp_path)


def test_lu_state_sends_writes_the_full_way(tmp_path: Path) -> None:
    async def test(p: WritePair) -> None:
        lus = p.lus()
        # A RESERVE(6) held by this nexus: the WRITE is allowed, by the full path.
        reply, _ = await p.read(bytes([0x16, 0, 0, 0, 0, 0]), edtl=0)
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and good(reply)
        await p.read(bytes([0x17, 0, 0, 0, 0, 0]), edtl=0)  # RELEASE(6)
        reply, served = await p.write(write16(0, 8), 4096)
        assert served == 1
        # A unit attention pending.
        for lu in lus:
            lu.raise_unit_attention(Reason.MODE_PARAMETERS_CHANGED)
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and status_of(reply) == (Op.SCSI_RESPONSE, 0x02)
        # The task set gated.
        for lu in lus:
            lu.task_set.gated = True
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and good(reply)
        for lu in lus:
            lu.task_set.gated = False
        # Write protected: DATA PROTECT from the full path.
        for lu in lus:
            lu.read_only = True
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and status_of(reply) == (Op.SCSI_RESPONSE, 0x02)
        for lu in lus:
            lu.read_only = False
        # The write cache off: every write on stable storage before GOOD.
        for lu in lus:
            lu.write_cache = False
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and good(reply)
        for lu in lus:
            lu.write_cache = True
        # Over the Block Limits' transfer length: INVALID FIELD IN CDB.
        for lu in lus:
            lu.max_transfer_blocks = 4
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and status_of(reply) == (Op.SCSI_RESPONSE, 0x02)
        for lu in lus:
            lu.max_transfer_blocks = 16384
        # A range held by COMPARE AND WRITE (elsewhere): the write goes through the gate.
        for lu in lus:
            lu._held[1] = (1 << 20, (1 << 20) + 512)
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and good(reply)
        for lu in lus:
            del lu._held[1]
        # The file refuses the write (a descriptor open read-only: EBADF): the full path
        # writes it again and answers with its sense.
        saved = []
        for lu in lus:
            file = lu.store.base
            saved.append(file._fd)
            file._fd = os.open(file.path, os.O_RDONLY)
        try:
            reply, served = await p.write(write16(0, 8), 4096)
        finally:
            for lu, fd in zip(lus, saved, strict=True):
                os.close(lu.store.base._fd)
                lu.store.base._fd = fd
        assert not served and status_of(reply) == (Op.SCSI_RESPONSE, 0x02)
        # The LU's store replaced (a new file): what was known of the old one is not used.
        kept = [(lu.store, lu._store_write_now) for lu in lus]
        for lu in lus:
            new = SparseFile(lu.store.base.path.with_suffix(".new"), lu.store.size)
            lu.store = new
            lu._store_write_now = write_now_of(new)
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and good(reply)
        reply, served = await p.write(write16(8, 8), 4096)
        assert served == 1
        full, fast = (os.pread(lu.store._fd, 8192, 0) for lu in lus)
        assert full == fast
        for lu, (store, store_write_now) in zip(lus, kept, strict=True):
            lu.store.close()
            lu.store, lu._store_write_now = store, store_write_now
        reply, served = await p.write(write16(0, 8), 4096)  # the plan made again
        assert not served and good(reply)
        # All clear: served again.
        reply, served = await p.write(write16(0, 8), 4096)
        assert served == 1

    run(test, tmp_path)


def test_digests_send_writes_the_full_way(tmp_path: Path) -> None:
    async def test(p: WritePair) -> None:
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and good(reply[:48])

    run(test, tmp_path, digests=True)


def test_a_write_past_the_segment_limit_is_the_full_paths_to_refuse(tmp_path: Path) -> None:
    async def test(p: WritePair) -> None:
        for side in (p.full, p.fast):
            side.shell.conn.receiver.max_data_length = 2048
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and reply[0] & 0x3F == Op.REJECT

    run(test, tmp_path)


def test_a_paired_volume_is_written_the_full_way(tmp_path: Path) -> None:
    """A volume in a pair copies before it writes (and a split or suspend holds writes at
    the write gate): every write to it is the full path's, until the pair is gone."""

    async def test(p: WritePair) -> None:
        lus = p.lus()
        for side, lu in zip((p.full, p.fast), lus, strict=True):
            source = lu.store.volume_id
            target = side.shell.runtime.scsi.luns[1].store.volume_id  # type: ignore[union-attr]
            await side.pairs.create("p", source, target)
        reply, served = await p.write(write16(0, 8), 4096)
        assert not served and good(reply)
        for side in (p.full, p.fast):
            await side.pairs.split("p")
        reply, served = await p.write(write16(8, 8), 4096)
        assert not served and good(reply)
        for side in (p.full, p.fast):
            await side.pairs.delete("p")
        reply, served = await p.write(write16(16, 8), 4096)
        assert served == 1

    run(test, tmp_path)


def test_task_management_behind_writes_leaves_them_to_the_full_path(tmp_path: Path) -> None:
    async def test(p: WritePair) -> None:
        raw = p.batch([write16(0, 8), write16(8, 8)])
        # ABORT TASK for the second write, in the same read: the full path has it in flight.
        tmf = bytearray(command(p.itt, p.cmdsn, b"", edtl=0, flags=FINAL | 1,
                                opcode=Op.TASK_MGMT_REQUEST | 0x40))  # fmt: skip
        tmf[20:24] = struct.pack(">I", p.itt - 1)
        tmf[32:48] = bytes(16)
        p.itt += 1
        reply, served = await p.send(raw + bytes(tmf), step=False)
        assert not served and reply

    run(test, tmp_path)
