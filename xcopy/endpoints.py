"""CSCD descriptors resolved to the logical units they name.

An identification descriptor (E4h) names an LU by one of its Device Identification (VPD
83h) designators. Only the LUs of the LUN map the initiator's session sees are searched:
the ACLs are per target, so an LU of another target (or of no target) is unreachable,
whatever designator the parameter list carries (LIO's CVE-2020-28374 was the opposite).
A designator matches when its code set, association (the LU), designator type, length
and bytes all equal one of the LU's, as sg_xcopy, QEMU and VMware build them from the
page they read; the protocol identifier nibble is ignored (sg_xcopy clears it).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from scsi.block_device import BlockDevice
from scsi.command import Nexus
from scsi.logical_unit import LogicalUnit
from scsi.vpd import ASSOC_LU, device_identification
from xcopy.params import THIS_LU, Cscd

BLOCK, STREAM = 0x00, 0x01


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A resolved CSCD: the LU (None for a NUL descriptor) and how to address it."""

    cscd: Cscd | None  # None: the CSCD ID FFFFh, the LU the command was sent to
    lu: LogicalUnit | None
    device_type: int
    block_size: int  # block devices: logical block length; stream: record length (fixed)
    pad: bool = False
    fixed: bool = False

    @property
    def is_null(self) -> bool:
        return self.lu is None


def lu_designators(lu: LogicalUnit, nexus: Nexus) -> set[tuple[int, int, bytes]]:
    """(code set, designator type, bytes) of the LU-associated designators of VPD 83h."""
    page = device_identification(lu, nexus)
    found = set()
    offset = 4
    end = 4 + int.from_bytes(page[2:4], "big")
    while offset + 4 <= end:
        code_set, kind, length = page[offset] & 0x0F, page[offset + 1], page[offset + 3]
        value = page[offset + 4 : offset + 4 + length]
        if (kind >> 4) & 0x03 == ASSOC_LU:
            found.add((code_set, kind & 0x0F, bytes(value)))
        offset += 4 + length
    return found


def find_lu(cscd: Cscd, luns: dict[int, LogicalUnit], nexus: Nexus) -> LogicalUnit | None:
    if cscd.association != ASSOC_LU:
        return None
    wanted = (cscd.code_set, cscd.designator_type, cscd.designator)
    for lu in luns.values():
        if wanted in lu_designators(lu, nexus):
            return lu
    return None


def device_type_of(lu: LogicalUnit) -> int | None:
    if isinstance(lu, BlockDevice):
        return BLOCK
    # Not loaded: no tape LU exists (targetd.luns imports tape modules with the first one).
    tapes = sys.modules.get("scsi.tape_device")
    if tapes is not None and isinstance(lu, tapes.TapeDevice):
        return STREAM
    return getattr(lu, "device_type", None)


class Unresolved(Exception):
    """The CSCD names no LU this initiator can reach (or one of another device type)."""

    def __init__(self, wrong_type: bool = False) -> None:
        super().__init__("wrong device type" if wrong_type else "not reachable")
        self.wrong_type = wrong_type


def resolve(
    cscd_id: int,
    cscds: tuple[Cscd, ...],
    luns: dict[int, LogicalUnit],
    this_lu: LogicalUnit,
    nexus: Nexus,
    memo: dict[int, LogicalUnit | None] | None = None,
) -> Endpoint:
    """The endpoint a segment's CSCD ID names; :class:`Unresolved` if there is none.
    ``memo`` keeps each CSCD's LU for the other segments of the same list (matching
    builds every LU's VPD 83h designators: 256 segments took ~50 ms before IMMED)."""
    if cscd_id == THIS_LU:
        kind = device_type_of(this_lu)
        if kind is None:
            raise Unresolved(wrong_type=True)
        return Endpoint(None, this_lu, kind, _native_block_size(this_lu))
    if cscd_id >= len(cscds):
        raise Unresolved()
    cscd = cscds[cscd_id]
    if cscd.nul:  # obsolete in SPC-4 but harmless: reads zeros, discards writes
        return Endpoint(cscd, None, cscd.device_type, cscd.block_length or 512, cscd.pad)
    if memo is None:
        lu = find_lu(cscd, luns, nexus)
    elif cscd_id in memo:
        lu = memo[cscd_id]
    else:
        lu = memo[cscd_id] = find_lu(cscd, luns, nexus)
    if lu is None:
        raise Unresolved()
    kind = device_type_of(lu)
    if kind != cscd.device_type:
        raise Unresolved(wrong_type=True)
    if kind == BLOCK:
        size = _native_block_size(lu)
        return Endpoint(cscd, lu, BLOCK, size, cscd.pad)
    return Endpoint(cscd, lu, STREAM, cscd.block_length, cscd.pad, cscd.fixed)


def _native_block_size(lu: LogicalUnit) -> int:
    return getattr(lu, "block_size", 0) or 0
