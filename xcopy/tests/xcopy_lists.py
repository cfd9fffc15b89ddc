"""EXTENDED COPY parameter lists and the CDBs that carry them, built byte by byte from SPC-4:
the one builder for the xcopy unit tests (through helpers_xcopy) and for the tiers that send
lists over the wire (integration, Ceph, power cut, guest). It imports nothing of the code
under test, so a list a test sends is written from the standard, not by the parser it tests.
(Named uniquely: pytest imports test helpers by file name, from pyproject's pythonpath.)

``cscds`` and ``segments`` are descriptors as one ``bytes`` or as a list of them."""

from __future__ import annotations

import struct
from collections.abc import Sequence

Descriptors = bytes | Sequence[bytes]


def _joined(descriptors: Descriptors) -> bytes:
    return descriptors if isinstance(descriptors, bytes) else b"".join(descriptors)


def identification(naa: bytes) -> bytes:
    """The identification descriptor VPD page 83h reports for a LU's NAA name: binary code
    set, LU association, designator type NAA."""
    return bytes([0x01, 0x03, 0, len(naa)]) + naa


def cscd(
    designator: bytes,
    device_type: int = 0,
    block_length: int = 0,
    *,
    fixed: bool = False,
    pad: bool = False,
    nul: bool = False,
    type_code: int = 0xE4,
) -> bytes:
    """An identification CSCD descriptor (E4h) naming a LU by a VPD 83h identification
    descriptor (``identification(naa)``), with the block (00h) or stream (01h) parameters."""
    d = bytearray(32)
    d[0] = type_code
    d[1] = (0x20 if nul else 0) | device_type
    d[4 : 4 + len(designator)] = designator
    d[28] = (0x04 if pad else 0) | (0x01 if fixed else 0)
    d[29:32] = block_length.to_bytes(3, "big")
    return bytes(d)


def seg_b2b(
    src: int, dst: int, blocks: int, src_lba: int, dst_lba: int, *, dc: bool = False
) -> bytes:
    return struct.pack(
        ">BBHHH2xHQQ", 0x02, 0x02 if dc else 0, 0x18, src, dst, blocks, src_lba, dst_lba
    )


def seg_b2s(src: int, dst: int, stream_length: int, blocks: int, lba: int) -> bytes:
    return struct.pack(
        ">BBHHHx3s2xHQ", 0x00, 0, 0x14, src, dst, stream_length.to_bytes(3, "big"), blocks, lba
    )


def seg_s2b(src: int, dst: int, stream_length: int, blocks: int, lba: int) -> bytes:
    return struct.pack(
        ">BBHHHx3s2xHQ", 0x01, 0, 0x14, src, dst, stream_length.to_bytes(3, "big"), blocks, lba
    )


def seg_filemarks(dst: int, count: int) -> bytes:
    return struct.pack(">BBH2xHx3s", 0x10, 0, 0x08, dst, count.to_bytes(3, "big"))


def seg_space(dst: int, code: int, count: int) -> bytes:
    return struct.pack(
        ">BBH2xHB3s", 0x11, 0, 0x08, dst, code, count.to_bytes(3, "big", signed=True)
    )


def seg_locate(dst: int, target: int) -> bytes:
    return struct.pack(">BBH2xHI", 0x12, 0, 0x08, dst, target)


def lid1(
    cscds: Descriptors,
    segments: Descriptors,
    *,
    list_id: int = 1,
    usage: int = 0,
    inline: bytes = b"",
) -> bytes:
    c, s = _joined(cscds), _joined(segments)
    head = struct.pack(">BBH4xII", list_id, usage << 3, len(c), len(s), len(inline))
    return head + c + s + inline


def lid4(
    cscds: Descriptors,
    segments: Descriptors,
    *,
    list_id: int = 1,
    usage: int = 0,
    immed: bool = False,
    g_sense: bool = False,
    inline: bytes = b"",
) -> bytes:
    c, s = _joined(cscds), _joined(segments)
    head = bytearray(48)
    head[0] = 0x01
    head[1] = usage << 3
    head[15] = (0x02 if g_sense else 0) | (0x01 if immed else 0)
    head[20:24] = list_id.to_bytes(4, "big")
    head[42:44] = len(c).to_bytes(2, "big")
    head[44:46] = len(s).to_bytes(2, "big")
    head[46:48] = len(inline).to_bytes(2, "big")
    return bytes(head) + c + s + inline


def xcopy_cdb(length: int, service_action: int = 0) -> bytes:
    """EXTENDED COPY (LID1: service action 00h, LID4: 01h) for a list of ``length`` bytes."""
    return bytes([0x83, service_action]) + bytes(8) + length.to_bytes(4, "big") + bytes(2)


def rcr_cdb(service_action: int, list_id: int = 0, allocation: int = 1024) -> bytes:
    """RECEIVE COPY RESULTS: a LID4 list id (service actions 05h, 06h) takes four bytes."""
    cdb = bytearray(16)
    cdb[0], cdb[1] = 0x84, service_action
    if service_action in (0x05, 0x06):
        cdb[2:6] = list_id.to_bytes(4, "big")
    else:
        cdb[2] = list_id
    cdb[10:14] = allocation.to_bytes(4, "big")
    return bytes(cdb)
