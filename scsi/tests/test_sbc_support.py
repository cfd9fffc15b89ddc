"""Shared helpers of the SBC unit tests (no tests here): a BlockDevice over a temp file
and CDB builders."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from scsi.block_device import BlockDevice
from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import Identity
from scsi.sense import parse_sense

NEXUS = Nexus("iqn.2026-11.org.test:init,i,0x000000000001", "iqn.2026-11.org.targetd:t,t,1")
MiB = 1 << 20


def make_lu(
    tmp_path: Path, block_size: int = 512, size: int = 4 * MiB, *, read_only: bool = False
) -> BlockDevice:
    path = tmp_path / f"lun-{block_size}.img"
    if read_only:
        path.write_bytes(b"")
        with path.open("r+b") as f:
            f.truncate(size)
    return BlockDevice.from_file(
        Identity(str(path)), path, size, block_size=block_size, read_only=read_only
    )


def run(lu: BlockDevice, cdb: bytes, data_out: bytes | None = None) -> ScsiResult:
    cmd = ScsiCommand(
        cdb=bytes(cdb),
        lun=0,
        nexus=NEXUS,
        data_out=None if data_out is None else memoryview(bytearray(data_out)),
    )
    return asyncio.run(lu.execute(cmd))


def sense_of(result: ScsiResult) -> tuple[int, int, int]:
    assert result.status == Status.CHECK_CONDITION, result
    assert result.sense is not None
    return parse_sense(result.sense)


def read10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x28, flags, lba, 0, blocks, 0)


def write10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, flags, lba, 0, blocks, 0)


def cdb16(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", opcode, flags, lba, blocks, 0, 0)


def cdb12(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIIBB", opcode, flags, lba, blocks, 0, 0)


def cdb10(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", opcode, flags, lba, 0, blocks, 0)


def read_blocks(lu: BlockDevice, lba: int, blocks: int) -> bytes:
    result = run(lu, read10(lba, blocks))
    assert result.status == Status.GOOD, result
    return bytes(result.data or b"")
