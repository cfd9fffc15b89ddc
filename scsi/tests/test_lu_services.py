"""A LU gets extra commands, VPD pages and a copy manager only as services at build time."""

from __future__ import annotations

import asyncio
from pathlib import Path

from scsi.block_device import BlockDevice
from scsi.command import Nexus, ScsiCommand, ScsiResult
from scsi.logical_unit import Identity, LogicalUnit, Services
from scsi.opcodes import OpcodeTable
from scsi.sbc import SBC_TABLE

NEXUS = Nexus("iqn.2026-11.org.test:ini,i,0x1", "iqn.2026-11.org.test:tgt,t,0x1")


def run(lu: LogicalUnit, cdb: bytes) -> ScsiResult:
    return asyncio.run(lu.execute_for(ScsiCommand(cdb, 0, NEXUS, data_in_length=4096)))


def test_services_are_the_lus_own(tmp_path: Path) -> None:
    table = OpcodeTable("extra")

    @table.command(0xC1, "VENDOR PING", bytes([0xC1, 0, 0, 0, 0, 0x07]))
    async def ping(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
        return ScsiResult(data=b"pong")

    services = Services(
        commands=table,
        vpd_pages={0xC9: lambda lu, nexus: bytes([0, 0xC9, 0, 1, 7])},
        copy_manager=object(),
    )
    plain = BlockDevice.from_file(Identity("t/a"), tmp_path / "a.img", 1 << 20)
    served = BlockDevice.from_file(Identity("t/b"), tmp_path / "b.img", 1 << 20, services=services)
    ping_cdb = bytes([0xC1, 0, 0, 0, 0, 0])
    assert bytes(run(served, ping_cdb).data or b"") == b"pong"
    assert run(plain, ping_cdb).status == 0x02  # INVALID COMMAND OPERATION CODE
    assert SBC_TABLE.get(0xC1) is None  # the device type's table is untouched
    inquiry = bytes([0x12, 0, 0, 0, 96, 0])
    assert bytes(run(served, inquiry).data or b"")[5] & 0x08  # 3PC: it has a copy manager
    assert not bytes(run(plain, inquiry).data or b"")[5] & 0x08
    supported = bytes([0x12, 1, 0x00, 0, 255, 0])
    assert 0xC9 in bytes(run(served, supported).data or b"")[4:]
    assert 0xC9 not in bytes(run(plain, supported).data or b"")[4:]
    assert bytes(run(served, bytes([0x12, 1, 0xC9, 0, 255, 0])).data or b"") == bytes(
        [0, 0xC9, 0, 1, 7]
    )
