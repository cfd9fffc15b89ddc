"""Builders for EXTENDED COPY parameter lists and a small in-memory target, shared by the
xcopy unit tests (named uniquely: pytest imports test helpers by file name)."""

from __future__ import annotations

import struct
from pathlib import Path

import xcopy
from scsi.block_device import BlockDevice
from scsi.command import Nexus, ScsiCommand, ScsiResult
from scsi.logical_unit import Identity, LogicalUnit
from scsi.tape_device import TapeDevice
from scsi.target import ScsiTarget
from xcopy.manager import CopyManager

NEXUS = Nexus("iqn.2026-11.org.test:ini,i,0x400000001234", "iqn.2026-11.org.test:tgt,t,0x1")
OTHER = Nexus("iqn.2026-11.org.test:other,i,0x400000005678", "iqn.2026-11.org.test:tgt,t,0x1")


def make_target(
    tmp: Path,
    *,
    blocks: int = 2048,
    block_size: int = 512,
    manager: CopyManager | None = None,
) -> ScsiTarget:
    """LUNs 0 and 1 (block) and 2 (tape), built with one target's copy services."""
    services = xcopy.services(manager=manager)
    luns: dict[int, LogicalUnit] = {
        0: BlockDevice.from_file(
            Identity("t/lun0"),
            tmp / "a.img",
            blocks * block_size,
            block_size=block_size,
            services=services,
        ),
        1: BlockDevice.from_file(
            Identity("t/lun1"),
            tmp / "b.img",
            blocks * block_size,
            block_size=block_size,
            services=services,
        ),
        2: TapeDevice.from_file(
            Identity("t/lun2", product="VIRTUAL-TAPE"), tmp / "t.img", 64 << 20, services=services
        ),
    }
    return ScsiTarget(luns)


def manager_of(target: ScsiTarget) -> CopyManager:
    manager = target.luns[0].services.copy_manager
    assert isinstance(manager, CopyManager)
    return manager


def naa(lu: LogicalUnit) -> bytes:
    return lu.identity.naa


def cscd(
    lu: LogicalUnit | None,
    *,
    device_type: int = 0,
    block_length: int = 512,
    fixed: bool = False,
    pad: bool = False,
    designator: bytes | None = None,
    nul: bool = False,
    type_code: int = 0xE4,
) -> bytes:
    value = designator if designator is not None else (naa(lu) if lu is not None else bytes(16))
    d = bytearray(32)
    d[0] = type_code
    d[1] = (0x20 if nul else 0) | device_type
    d[4] = 0x01  # binary
    d[5] = 0x03  # LU association, NAA
    d[7] = len(value)
    d[8 : 8 + len(value)] = value
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
    cscds: list[bytes],
    segments: list[bytes],
    *,
    list_id: int = 1,
    usage: int = 0,
    inline: bytes = b"",
) -> bytes:
    c, s = b"".join(cscds), b"".join(segments)
    head = struct.pack(">BBH4xII", list_id, usage << 3, len(c), len(s), len(inline))
    return head + c + s + inline


def lid4(
    cscds: list[bytes],
    segments: list[bytes],
    *,
    list_id: int = 1,
    usage: int = 0,
    immed: bool = False,
    g_sense: bool = False,
    inline: bytes = b"",
) -> bytes:
    c, s = b"".join(cscds), b"".join(segments)
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
    return bytes([0x83, service_action]) + bytes(8) + length.to_bytes(4, "big") + bytes(2)


def rcr_cdb(service_action: int, list_id: int = 0, allocation: int = 1024) -> bytes:
    cdb = bytearray(16)
    cdb[0], cdb[1] = 0x84, service_action
    if service_action in (0x05, 0x06):
        cdb[2:6] = list_id.to_bytes(4, "big")
    else:
        cdb[2] = list_id
    cdb[10:14] = allocation.to_bytes(4, "big")
    return bytes(cdb)


async def send(
    target: ScsiTarget, cdb: bytes, data: bytes | None = None, *, lun: int = 0, nexus: Nexus = NEXUS
) -> ScsiResult:
    cmd = ScsiCommand(
        cdb,
        lun,
        nexus,
        data_out=memoryview(data) if data is not None else None,
        data_in_length=1 << 20,
    )
    return await target.execute(cmd)


async def extended_copy(
    target: ScsiTarget, params: bytes, *, lun: int = 0, sa: int = 0, nexus: Nexus = NEXUS
) -> ScsiResult:
    return await send(target, xcopy_cdb(len(params), sa), params, lun=lun, nexus=nexus)
