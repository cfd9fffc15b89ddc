"""A small in-memory target for the xcopy unit tests, a CSCD naming one of its LU objects
(built by xcopy_lists, which holds the other list builders) and a way to send it a CDB
(named uniquely: pytest imports test helpers by file name)."""

from __future__ import annotations

from pathlib import Path

import xcopy_lists

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
        lun: BlockDevice.from_file(
            Identity(f"t/lun{lun}"),
            tmp / image,
            blocks * block_size,
            block_size=block_size,
            services=services,
        )
        for lun, image in ((0, "a.img"), (1, "b.img"))
    }
    luns[2] = TapeDevice.from_file(
        Identity("t/lun2", product="VIRTUAL-TAPE"), tmp / "t.img", 64 << 20, services=services
    )
    return ScsiTarget(luns)


def ready(target: ScsiTarget) -> None:
    """Both test nexuses logged in, their unit attentions (power on) taken."""
    for nexus in (NEXUS, OTHER):
        target.nexus_established(nexus)
        for lu in target.luns.values():
            lu.pop_unit_attention(nexus)


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
    """A CSCD descriptor naming ``lu`` by its NAA (or ``designator``; zeros for None)."""
    value = designator if designator is not None else (naa(lu) if lu is not None else bytes(16))
    return xcopy_lists.cscd(
        xcopy_lists.identification(value),
        device_type,
        block_length,
        fixed=fixed,
        pad=pad,
        nul=nul,
        type_code=type_code,
    )


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
    return await send(target, xcopy_lists.xcopy_cdb(len(params), sa), params, lun=lun, nexus=nexus)
