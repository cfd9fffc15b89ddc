"""A SCSI target device: the LUN map and what happens to commands for absent LUNs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from scsi.activity import COMMANDS
from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import LogicalUnit
from scsi.sense import CheckCondition, Reason, build_sense

INQUIRY = 0x12
REQUEST_SENSE = 0x03
REPORT_LUNS = 0xA0


class ScsiTarget:
    """Routes a command to its LU; answers REPORT LUNS and absent-LUN commands itself."""

    def __init__(self, luns: dict[int, LogicalUnit]) -> None:
        self.luns = dict(luns)
        for lu in self.luns.values():
            lu.report_luns = self.lun_numbers
            lu.lun_map = self.luns  # what EXTENDED COPY may reach from this LU

    def lun_numbers(self) -> list[int]:
        return sorted(self.luns)

    def nexus_established(self, nexus: Nexus) -> None:
        for lu in self.luns.values():
            lu.nexus_established(nexus)

    def nexus_lost(self, nexus: Nexus) -> None:
        for lu in self.luns.values():
            lu.nexus_lost(nexus)

    def reset(self, nexus: Nexus | None, lun: int | None = None) -> list[Awaitable[None]]:
        """LOGICAL UNIT RESET of ``lun``, or TARGET (warm) RESET of every LU when None.
        Returns what must finish before the reset is answered: a LU other gateways serve
        too tells them, so their nexuses get the unit attention as well."""
        pending = []
        for number, lu in self.luns.items():
            if lun is None or number == lun:
                lu.reset(nexus)
                if lu.after_reset is not None:
                    pending.append(lu.after_reset())
        return pending

    def execute(self, cmd: ScsiCommand) -> Coroutine[Any, Any, ScsiResult]:
        """The command's coroutine (the LU's own: no frame of ours on every command)."""
        COMMANDS.started += 1  # background copies give way while this moves
        lu = self.luns.get(cmd.lun)
        if lu is not None:
            return lu.execute(cmd)
        return self._absent(cmd)

    async def _absent(self, cmd: ScsiCommand) -> ScsiResult:
        return absent_lun(cmd, self.report_luns_data)

    def report_luns_data(self) -> bytes:
        return encode_report_luns(sorted(self.luns))


def encode_lun(lun: int) -> bytes:
    """SAM single-level LUN: peripheral addressing below 256, flat space above."""
    if lun < 256:
        return bytes([0, lun]) + bytes(6)
    return bytes([0x40 | (lun >> 8) & 0x3F, lun & 0xFF]) + bytes(6)


def decode_lun(raw: bytes) -> int:
    """The LUN number of an 8-byte SAM LUN field (peripheral or flat addressing)."""
    method = raw[0] >> 6
    if method in (0, 1):
        return ((raw[0] & 0x3F) << 8) | raw[1]
    return 0xFFFF  # an addressing method we do not serve: no such LUN


def encode_report_luns(luns: list[int]) -> bytes:
    body = b"".join(encode_lun(n) for n in luns)
    return len(body).to_bytes(4, "big") + bytes(4) + body


def absent_lun(cmd: ScsiCommand, report_luns: Callable[[], bytes]) -> ScsiResult:
    """SPC-4 4.6.22: INQUIRY gets qualifier 011b, REPORT LUNS works, the rest fail."""
    opcode = cmd.opcode
    if opcode == INQUIRY:
        alloc = int.from_bytes(cmd.cdb[3:5], "big")
        if cmd.cdb[1] & 0x01:  # EVPD for an absent LU
            return ScsiResult(Status.CHECK_CONDITION, sense=build_sense(Reason.LUN_NOT_SUPPORTED))
        data = bytearray(36)
        data[0] = 0x7F  # qualifier 011b, device type 1Fh: no LU here
        data[2] = 0x06
        data[3] = 0x02
        data[4] = 31
        return ScsiResult(data=bytes(data[:alloc]))
    if opcode == REPORT_LUNS:
        alloc = int.from_bytes(cmd.cdb[6:10], "big")
        return ScsiResult(data=report_luns()[:alloc])
    if opcode == REQUEST_SENSE:
        alloc = cmd.cdb[4]
        return ScsiResult(data=build_sense(Reason.LUN_NOT_SUPPORTED)[:alloc])
    return ScsiResult(
        Status.CHECK_CONDITION, sense=CheckCondition(Reason.LUN_NOT_SUPPORTED).sense()
    )
