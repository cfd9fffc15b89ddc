"""Large READs sent straight from the LU's file (sendfile, targetd/socket_output.py) against a
real daemon: the bytes, the Data-In PDUs that carry them (split by the initiator's
MaxRecvDataSegmentLength, with and without digests), the end of the LU, holes, and a WRITE
sent while a READ of the same blocks is in flight; a READ that ends on a connection the
target has closed holds nothing."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from conftest import DEFAULT_IQN, Daemon
from raw_initiator import RawInitiator

from scsi.sense import parse_sense
from targetd.iscsi.pdu import Op

BLOCK = 512
LUN_BYTES = 1 << 30  # the default configuration's LUN 0
MiB = 1 << 20


def pattern(offset: int, length: int) -> bytes:
    """Bytes that differ at every 4-byte position of the LU, so a misplaced range shows."""
    first = offset // 4
    return b"".join(struct.pack(">I", (first + i) ^ 0x5A5A5A5A) for i in range(length // 4))


def read16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0)


def write16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, 0, lba, blocks, 0, 0)


def read_pdus(ini: RawInitiator, offset: int, length: int) -> tuple[int, bytes, list[int]]:
    """One READ(16): (status, data, segment lengths), checking every Data-In's DataSN and
    buffer offset as an initiator would."""
    ini.send(ini.scsi_header(read16(offset // BLOCK, length // BLOCK), read=length))
    data = bytearray()
    segments: list[int] = []
    while True:
        resp = ini.recv()
        if resp.opcode == Op.SCSI_RESPONSE:
            return resp.bhs[3], bytes(data), segments
        assert resp.opcode == Op.DATA_IN, hex(resp.opcode)
        assert resp.u32(36) == len(segments), "DataSN out of order"
        assert resp.u32(40) == len(data), "buffer offset out of order"
        data += resp.data
        segments.append(len(resp.data))
        if resp.bhs[1] & 0x01:
            return resp.bhs[3], bytes(data), segments


def lun_file(daemon: Daemon) -> str:
    return str(daemon.state_dir / "lun0.img")


def write_file(daemon: Daemon, offset: int, data: bytes) -> None:
    fd = os.open(lun_file(daemon), os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def session(daemon: Daemon, **keys: str) -> RawInitiator:
    ini = RawInitiator(daemon.port)
    resp = ini.login(DEFAULT_IQN, **keys)
    assert resp.bhs[36] == 0, f"login failed: {resp.bhs[36:38].hex()}"
    ini.clear_unit_attentions()
    return ini


# (offset, length): a 1 MiB read, the smallest sent from the file (64 KiB) at an offset
# that is not a page's, the last MiB of the LU, and a read ending at its last block.
RANGES = [(0, MiB), (3 * MiB + 512, 64 * 1024), (LUN_BYTES - MiB, MiB),
          (LUN_BYTES - 3 * 65536 - 1024, 3 * 65536 + 1024)]  # fmt: skip


@pytest.mark.parametrize(
    "digests",
    [("None", "None"), ("CRC32C", "CRC32C"), ("None", "CRC32C"), ("CRC32C", "None")],
    ids=["no-digest", "both-digests", "data-digest", "header-digest"],
)
@pytest.mark.parametrize("mrdsl", [8192, 65536, 262144])
def test_large_reads_carry_the_files_bytes(
    targetd: Daemon, digests: tuple[str, str], mrdsl: int
) -> None:
    for offset, length in RANGES:
        write_file(targetd, offset, pattern(offset, length))
    header, data = digests
    with session(
        targetd, HeaderDigest=header, DataDigest=data, MaxRecvDataSegmentLength=str(mrdsl)
    ) as ini:
        assert ini.header_digest == (header == "CRC32C")
        assert ini.data_digest == (data == "CRC32C")
        for offset, length in RANGES:
            status, got, segments = read_pdus(ini, offset, length)
            assert status == 0
            assert got == pattern(offset, length), f"READ at {offset} of {length}"
            assert max(segments) <= mrdsl
            assert len(segments) == -(-length // mrdsl)


def test_holes_read_as_zeros_from_the_file_and_from_a_buffer(targetd: Daemon) -> None:
    """The first READ of a hole finds no page cached (read into a buffer); the second is
    sent from the file. Both are zeros."""
    with session(targetd) as ini:
        for _ in range(2):
            status, got, _ = read_pdus(ini, 200 * MiB, MiB)
            assert (status, got) == (0, bytes(MiB))


def test_read_past_the_end_is_refused(targetd: Daemon) -> None:
    with session(targetd) as ini:
        status, data, sense = ini.command(
            read16(LUN_BYTES // BLOCK - 1024, 2048), read=2048 * BLOCK
        )
    assert (status, data) == (0x02, b"")
    assert parse_sense(sense) == (0x05, 0x21, 0x00)


def test_write_sent_during_a_read_of_the_same_blocks(targetd: Daemon) -> None:
    """A WRITE sent right behind a READ of the same blocks, before the READ's data is read:
    both end GOOD; the READ gives each block's old or new bytes (SCSI leaves the two
    unordered); a READ after the WRITE's status gives the new bytes."""
    offset, length = 8 * MiB, MiB
    old = pattern(offset, length)
    write_file(targetd, offset, old)
    new_at, new = offset + 256 * 1024, bytes([0xC3]) * (128 * 1024)
    with session(targetd) as ini:
        status, got, _ = read_pdus(ini, offset, length)  # the pages are cached now
        assert (status, got) == (0, old)
        ini.send(ini.scsi_header(read16(offset // BLOCK, length // BLOCK), read=length))
        read_itt = ini.itt
        ini.send(
            ini.scsi_header(
                write16(new_at // BLOCK, len(new) // BLOCK),
                write=len(new),
                data_len=len(new),
                immediate=False,
            ),
            new,
        )
        write_itt = ini.itt
        time.sleep(0.2)  # the target runs both before we take any of the READ's bytes
        data = read_and_write_answered(ini, read_itt, write_itt)
        expected_new = old[: new_at - offset] + new + old[new_at - offset + len(new) :]
        for b in range(0, length, BLOCK):
            block = data[b : b + BLOCK]
            assert block in (old[b : b + BLOCK], expected_new[b : b + BLOCK]), f"block {b}"
        status, got, _ = read_pdus(ini, offset, length)
        assert (status, got) == (0, expected_new)


def read_and_write_answered(
    ini: RawInitiator, read_itt: int, write_itt: int, *, write_after_read: bool = False
) -> bytes:
    """Take the READ's Data-In and both commands' status (each GOOD), answering the
    target's pings (which acknowledge the READ's status: ExpStatSN); return the READ's
    data. ``write_after_read``: the WRITE must end after the READ."""
    data = bytearray()
    statuses: dict[int, int] = {}
    while len(statuses) < 2:
        resp = ini.recv()
        itt = resp.u32(16)
        if resp.opcode == Op.DATA_IN:
            assert itt == read_itt
            data += resp.data
            if resp.bhs[1] & 0x01:
                statuses[itt] = resp.bhs[3]
        elif resp.opcode == Op.NOP_IN:
            assert write_itt not in statuses or not write_after_read
            ini.answer_ping(resp)
        else:
            assert resp.opcode == Op.SCSI_RESPONSE, hex(resp.opcode)
            if write_after_read:
                assert itt == write_itt and read_itt in statuses, "WRITE answered first"
            statuses[itt] = resp.bhs[3]
    assert statuses == {read_itt: 0, write_itt: 0}
    return bytes(data)


def ordered_write_behind_a_read(
    ini: RawInitiator, offset: int, length: int, new: bytes
) -> tuple[int, int]:
    """Send a READ of ``length`` bytes at ``offset`` and, right behind it, an ORDERED WRITE
    of ``new`` at ``offset``, reading nothing: (the READ's ITT, the WRITE's ITT)."""
    ini.send(ini.scsi_header(read16(offset // BLOCK, length // BLOCK), read=length))
    read_itt = ini.itt
    ini.send(
        ini.scsi_header(
            write16(offset // BLOCK, len(new) // BLOCK),
            write=len(new),
            data_len=len(new),
            attr=2,  # ORDERED
        ),
        new,
    )
    return read_itt, ini.itt


def test_an_ordered_write_does_not_change_an_older_reads_data_still_to_be_sent(
    targetd: Daemon,
) -> None:
    """The READ's data is read from the file when the socket takes it, not when the READ
    ran: an ORDERED WRITE behind it (SAM-5: it starts only once the READ has completed) must
    wait until the initiator has the READ's bytes, here long after the target answered it
    (the initiator reads nothing for a while, so the socket is full). The WRITE still ends
    GOOD once the initiator has read the READ's data and answered the target's ping."""
    offset, length = 16 * MiB, 4 * MiB
    old = pattern(offset, length)
    new = bytes([0xA5]) * (64 * 1024)
    write_file(targetd, offset, old)
    with session(targetd) as ini:
        status, got, _ = read_pdus(ini, offset, length)  # the pages are cached now
        assert (status, got) == (0, old)
        read_itt, write_itt = ordered_write_behind_a_read(ini, offset, length, new)
        time.sleep(0.5)  # a slow initiator: nothing read
        data = read_and_write_answered(ini, read_itt, write_itt, write_after_read=True)
        assert data == old, "the READ shows the ORDERED WRITE made after it"
        status, got, _ = read_pdus(ini, offset, length)
        assert (status, got) == (0, new + old[len(new) :])


def test_a_dropped_connection_lets_the_ordered_write_waiting_for_its_read_go(
    targetd: Daemon,
) -> None:
    """An ORDERED WRITE from another session waits for a READ whose data has not left; the
    READ's connection drops with the data unread: the WRITE then runs."""
    offset, length = 32 * MiB, 4 * MiB
    old = pattern(offset, length)
    new = bytes([0x3C]) * (64 * 1024)
    write_file(targetd, offset, old)
    reader = session(targetd)
    writer = RawInitiator(targetd.port, name="iqn.2026-11.org.targetd.test:writer")
    try:
        resp = writer.login(DEFAULT_IQN)
        assert resp.bhs[36] == 0
        writer.clear_unit_attentions()
        status, got, _ = read_pdus(reader, offset, length)
        assert (status, got) == (0, old)
        reader.send(reader.scsi_header(read16(offset // BLOCK, length // BLOCK), read=length))
        # Its first bytes have come: the READ has run; the rest waits in the full socket.
        assert reader.sock.recv(1, socket.MSG_PEEK)
        time.sleep(0.2)
        writer.send(
            writer.scsi_header(
                write16(offset // BLOCK, len(new) // BLOCK),
                write=len(new),
                data_len=len(new),
                attr=2,
            ),
            new,
        )
        writer.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            writer.recv()  # waits for the READ
        reader.close()
        writer.sock.settimeout(10)
        resp = writer.recv()
        assert (resp.opcode, resp.bhs[3]) == (Op.SCSI_RESPONSE, 0)
        status, got, _ = read_pdus(writer, offset, length)
        assert (status, got) == (0, new + old[len(new) :])
    finally:
        reader.close()
        writer.close()


def read_to_eof(ini: RawInitiator) -> bytes:
    """What the socket gives until the target's FIN."""
    ini.sock.settimeout(10)
    stream = bytearray()
    while chunk := ini.sock.recv(1 << 20):
        stream += chunk
    return bytes(stream)


def status_sn_of(stream: bytes, itt: int) -> int:
    """The StatSN of the status (in a Data-In or a SCSI Response) of task ``itt``."""
    pos = 0
    while len(stream) - pos >= 48:
        bhs = stream[pos : pos + 48]
        op, dlen = bhs[0] & 0x3F, int.from_bytes(bhs[5:8], "big")
        done = op == Op.SCSI_RESPONSE or (op == Op.DATA_IN and bhs[1] & 0x01)
        if done and struct.unpack_from(">I", bhs, 16)[0] == itt:
            return int(struct.unpack_from(">I", bhs, 24)[0])
        pos += 48 + dlen + (-dlen & 3)
    raise AssertionError(f"no status of task {itt:#x} in {len(stream)} bytes")


def acknowledge(ini: RawInitiator, exp_stat_sn: int) -> None:
    """A NOP-Out that wants no answer, carrying ``exp_stat_sn``."""
    hdr = bytearray(48)
    hdr[0], hdr[1] = Op.NOP_OUT | 0x40, 0x80
    struct.pack_into(">IIII", hdr, 16, 0xFFFFFFFF, 0xFFFFFFFF, ini.cmdsn, exp_stat_sn)
    ini.send(hdr)


def ordered_write(ini: RawInitiator, offset: int, data: bytes) -> int:
    hdr = ini.scsi_header(
        write16(offset // BLOCK, len(data) // BLOCK), write=len(data), data_len=len(data), attr=2
    )
    ini.send(hdr, data)
    return ini.itt


def good_status_of(ini: RawInitiator, itt: int, timeout: float) -> None:
    ini.sock.settimeout(timeout)
    while True:
        resp = ini.recv()
        if resp.opcode == Op.NOP_IN:
            continue  # a ping for a READ of another session: not this one's to answer
        assert (resp.opcode, resp.u32(16), resp.bhs[3]) == (Op.SCSI_RESPONSE, itt, 0)
        return


def take_read(ini: RawInitiator) -> None:
    """The data and status of the READ in flight (answering no ping), then its
    acknowledgement: a NOP-Out carrying the ExpStatSN past its status."""
    ini.sock.settimeout(10)
    while True:
        resp = ini.recv()
        if resp.opcode == Op.SCSI_RESPONSE or (resp.opcode == Op.DATA_IN and resp.bhs[1] & 1):
            assert resp.bhs[3] == 0
            break
    acknowledge(ini, ini.expstatsn)


def test_a_read_that_ends_on_a_connection_the_target_closed_holds_nothing(
    targetd: Daemon,
) -> None:
    """The target closes a connection (a session reinstatement) that keeps one READ held
    (of LUN 1, unacknowledged) while another READ (of LUN 0) still waits in LUN 0's task
    set, behind an ORDERED WRITE that waits for a third session's READ. That session
    acknowledges its READ: the WRITE runs, and the READ behind it ends on the closed
    connection, where its reply cannot be sent any more. It must not hold LUN 0's task
    set: the ORDERED WRITE behind it runs at once (before, it waited for the initiator to
    close its end, or for CLOSE_WAIT, 30 s)."""
    offset, length = 48 * MiB, 4 * MiB
    old = pattern(offset, length)
    write_file(targetd, offset, old)
    fd = os.open(str(targetd.state_dir / "lun1.img"), os.O_WRONLY)
    try:
        os.pwrite(fd, old, offset)
    finally:
        os.close(fd)
    reader = session(targetd)
    third = RawInitiator(targetd.port, name="iqn.2026-11.org.targetd.test:third")
    writer = RawInitiator(targetd.port, name="iqn.2026-11.org.targetd.test:writer")
    again = None
    try:
        for ini in (third, writer):
            assert ini.login(DEFAULT_IQN).bhs[36] == 0
            ini.clear_unit_attentions()
        reader.clear_unit_attentions(1)
        behind = offset + 2 * MiB  # blocks the WRITEs leave alone (their pages stay cached)
        assert read_pdus(reader, offset, length)[:2] == (0, old)  # cached now
        reader.send(reader.scsi_header(read16(offset // BLOCK, length // BLOCK), lun=1,
                                       read=length))  # fmt: skip
        assert reader.sock.recv(1, socket.MSG_PEEK)  # it ran; the rest waits in the socket
        third.send(third.scsi_header(read16(offset // BLOCK, length // BLOCK), read=length))
        assert third.sock.recv(1, socket.MSG_PEEK)
        first = ordered_write(writer, offset, bytes([0x3C]) * (64 * 1024))
        time.sleep(0.2)  # it waits for the third session's READ
        reader.send(reader.scsi_header(read16(behind // BLOCK, MiB // BLOCK), read=MiB))
        time.sleep(0.2)  # it waits behind the ORDERED WRITE
        second = ordered_write(writer, offset, bytes([0xC3]) * (64 * 1024))
        again = RawInitiator(targetd.port, name=reader.name)  # the reader's name and ISID
        assert again.login(DEFAULT_IQN).bhs[36] == 0  # its connection is closed
        read_to_eof(reader)  # the LUN 1 READ and its status, then the FIN: not acknowledged
        take_read(third)
        good_status_of(writer, first, 10)
        good_status_of(writer, second, 10)  # the READ between them ended, sending nothing
    finally:
        reader.close()
        third.close()
        writer.close()
        if again is not None:
            again.close()
