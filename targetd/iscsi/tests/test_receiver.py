"""PduReceiver: framing, direct placement, digests, limits -- fed in arbitrary chunks."""

from __future__ import annotations

import crc32c
import pytest

from targetd.iscsi.pdu import BHS_LEN, Op, Pdu, RejectReason, new_header, padded, put_u32
from targetd.iscsi.receiver import (
    DIRECT_THRESHOLD,
    STAGING_SIZE,
    IscsiProtocolError,
    PduReceiver,
)


def make_pdu(
    opcode: int,
    data: bytes = b"",
    *,
    itt: int = 1,
    hd: bool = False,
    dd: bool = False,
    offset: int = 0,
) -> bytes:
    hdr = new_header(opcode, 0x80, itt=itt, data_length=len(data))
    put_u32(hdr, 40, offset)
    out = bytes(hdr)
    if hd:
        out += crc32c.crc32c(hdr).to_bytes(4, "little")
    if data:
        body = data + bytes(padded(len(data)) - len(data))
        out += body
        if dd:
            out += crc32c.crc32c(body).to_bytes(4, "little")
    return out


def feed(rx: PduReceiver, stream: bytes, chunk: int) -> list:
    got: list = []
    pos = 0
    while pos < len(stream):
        buf = rx.get_buffer()
        n = min(len(buf), chunk, len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        got += rx.buffer_updated(n)
        pos += n
    return got


@pytest.mark.parametrize("chunk", [1, 7, 48, 1000, 1 << 20])
def test_frames_small_and_large_pdus_in_any_chunking(chunk: int) -> None:
    small = bytes(range(5))
    big = bytes(i % 251 for i in range(3 * DIRECT_THRESHOLD + 3))
    stream = make_pdu(Op.NOP_OUT, small) + make_pdu(Op.DATA_OUT, big, itt=2) + make_pdu(Op.NOP_OUT)
    rx = PduReceiver()
    rx.max_data_length = 1 << 20
    pdus = feed(rx, stream, chunk)
    assert [p.opcode for p in pdus] == [Op.NOP_OUT, Op.DATA_OUT, Op.NOP_OUT]
    assert bytes(pdus[0].data) == small
    assert bytes(pdus[1].data) == big
    assert pdus[2].data == b""


@pytest.mark.parametrize("chunk", [5, 4096, 1 << 20])
def test_data_lands_in_the_placement_buffer(chunk: int) -> None:
    dest = bytearray(2 * DIRECT_THRESHOLD + 100)
    offset = 100
    data = bytes(i % 13 for i in range(2 * DIRECT_THRESHOLD))

    def placement(bhs: bytes) -> memoryview:
        off = int.from_bytes(bhs[40:44], "big")
        return memoryview(dest)[off : off + int.from_bytes(bhs[5:8], "big")]

    rx = PduReceiver(placement)
    rx.max_data_length = 1 << 20
    (pdu,) = feed(rx, make_pdu(Op.DATA_OUT, data, offset=offset), chunk)
    assert isinstance(pdu.data, memoryview) and pdu.data.obj is dest
    assert dest[offset:] == data


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_digests_checked_and_bad_data_digest_reported_in_order(chunk: int) -> None:
    good = make_pdu(Op.NOP_OUT, b"abc", hd=True, dd=True)
    bad = bytearray(make_pdu(Op.NOP_OUT, b"xyz", itt=2, hd=True, dd=True))
    bad[-1] ^= 0xFF
    rx = PduReceiver()
    rx.header_digest = rx.data_digest = True
    items = feed(rx, good + bytes(bad) + good, chunk)
    assert isinstance(items[0], Pdu) and bytes(items[0].data) == b"abc"
    assert isinstance(items[1], IscsiProtocolError)
    assert items[1].reason == RejectReason.DATA_DIGEST_ERROR and not items[1].fatal
    assert isinstance(items[2], Pdu)


def test_header_digest_error_is_fatal_and_stops_framing() -> None:
    bad = bytearray(make_pdu(Op.NOP_OUT, hd=True))
    bad[BHS_LEN] ^= 1
    rx = PduReceiver()
    rx.header_digest = True
    items = feed(rx, bytes(bad) + make_pdu(Op.NOP_OUT, hd=True), 1 << 20)
    assert len(items) == 1 and items[0].fatal


def test_oversized_data_segment_refused_before_its_payload() -> None:
    rx = PduReceiver()
    rx.max_data_length = 8192
    hdr = new_header(Op.SCSI_COMMAND, 0x80, data_length=8193)
    items = feed(rx, bytes(hdr), 1 << 20)  # only the header arrived
    assert len(items) == 1 and items[0].fatal
    assert items[0].bhs == bytes(hdr)


def test_after_a_large_segment_the_next_one_is_received_without_a_copy() -> None:
    """With a placement, only what came in with the first header goes through staging:
    after that, the receiver asks for one header at a time, so the next large segment
    lands straight in its own buffer even when the socket has all of it ready."""
    size = STAGING_SIZE + 4096
    dests = [bytearray(size), bytearray(size)]
    data = [bytes([i + 1]) * size for i in range(2)]

    def placement(bhs: bytes) -> memoryview:
        return memoryview(dests[int.from_bytes(bhs[16:20], "big") - 1])

    rx = PduReceiver(placement)
    rx.max_data_length = 1 << 20
    stream = make_pdu(Op.DATA_OUT, data[0], itt=1) + make_pdu(Op.DATA_OUT, data[1], itt=2)
    staged = pos = 0
    got: list = []
    while pos < len(stream):
        buf = rx.get_buffer()  # a socket with everything ready fills what it is given
        n = min(len(buf), len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        if not any(buf.obj is d for d in dests):
            staged += n
        got += rx.buffer_updated(n)
        pos += n
    assert [bytes(p.data) for p in got] == data
    assert staged == STAGING_SIZE + BHS_LEN


def test_header_only_reads_end_with_the_first_small_pdu() -> None:
    """After a small PDU the receiver offers its whole staging buffer again (a stream of
    small commands is read in large gulps, not one header per system call)."""
    rx = PduReceiver(lambda bhs: None)
    rx.max_data_length = 1 << 20
    big = bytes(STAGING_SIZE + 4096)  # too large for staging: received out of line
    stream = make_pdu(Op.DATA_OUT, big) + make_pdu(Op.NOP_OUT, b"abc", itt=2)
    assert len(feed(rx, stream, 1 << 20)) == 2
    assert len(rx.get_buffer()) == STAGING_SIZE


def test_a_small_segment_received_in_pieces_keeps_the_whole_staging_buffer() -> None:
    """A 4 KiB write whose data arrives after its header lands in its placement, and the
    receiver then still offers its whole staging buffer: a stream of small writes is read
    many PDUs per recv, not one header and one segment per system call."""
    dest = bytearray(4096)
    rx = PduReceiver(lambda bhs: memoryview(dest))
    stream = make_pdu(Op.SCSI_COMMAND, b"\x5a" * 4096)
    buf = rx.get_buffer()
    buf[: BHS_LEN + 100] = stream[: BHS_LEN + 100]  # the header and part of the data
    assert rx.buffer_updated(BHS_LEN + 100) == []
    rest = rx.get_buffer()
    assert rest.obj is dest
    rest[: len(stream) - BHS_LEN - 100] = stream[BHS_LEN + 100 :]
    (pdu,) = rx.buffer_updated(len(stream) - BHS_LEN - 100)
    assert bytes(pdu.data) == b"\x5a" * 4096
    assert len(rx.get_buffer()) == STAGING_SIZE
