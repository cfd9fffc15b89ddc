"""The copy manager as one more initiator of each LU it reads or writes.

A copy acts on behalf of the I_T nexus that sent the EXTENDED COPY (SPC-4 leaves the
copy manager's reservations to the device; this is docs/xcopy.md, "Reservations"): what
that nexus may not do to an LU with its own commands, its copy may not do either. Every
access goes through the LU, never around it:

- commands with a CDB of their own (WRITE FILEMARKS, SPACE, LOCATE on a tape) are sent
  with :meth:`LogicalUnit.execute_for`: lookup, reservation check, medium lock and
  handler, as for a host's command (unit attentions stay for the host);
- data moved by other means (chunks, records, kernel copies) is admitted first with
  :meth:`LogicalUnit.admit` under the opcode a host would have used (READ(16)/WRITE(16)
  on a block LU, READ(6)/WRITE(6) on a stream LU), right before each chunk, so a
  reservation taken while a copy runs stops it at the next chunk.

A refusal is :class:`Refused`; the engine turns it into COPY ABORTED with the LU's
status (RESERVATION CONFLICT) or sense forwarded.
"""

from __future__ import annotations

from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import LogicalUnit
from scsi.sense import CheckCondition, Reason

READ_BLOCKS = 0x88  # READ(16)
WRITE_BLOCKS = 0x8A  # WRITE(16)
READ_STREAM = 0x08  # READ(6)
WRITE_STREAM = 0x0A  # WRITE(6)
BLOCK_DEVICE = 0x00


class Refused(Exception):
    """An LU refused what the copy asked of it: ``result`` is its answer."""

    def __init__(self, lu: LogicalUnit, result: ScsiResult) -> None:
        super().__init__(f"{lu.identity.device_id}: {result.status.name}")
        self.lu = lu
        self.result = result


def read_opcode(lu: LogicalUnit) -> int:
    return READ_BLOCKS if lu.device_type == BLOCK_DEVICE else READ_STREAM


def write_opcode(lu: LogicalUnit) -> int:
    return WRITE_BLOCKS if lu.device_type == BLOCK_DEVICE else WRITE_STREAM


def admit(lu: LogicalUnit | None, nexus: Nexus, opcode: int) -> None:
    """Raise :class:`Refused` unless ``nexus`` may run ``opcode`` on ``lu`` now."""
    if lu is None:  # a NUL descriptor: nothing to reserve
        return
    luns = lu.lun_map
    if luns is not None and not any(other is lu for other in luns.values()):
        # Removed from its target (a reload) while the copy ran: it is going away.
        sense = CheckCondition(Reason.LUN_NOT_SUPPORTED).sense(lu.descriptor_sense)
        raise Refused(lu, ScsiResult(Status.CHECK_CONDITION, sense=sense))
    result = lu.admit(nexus, opcode)
    if result is not None:
        raise Refused(lu, result)


def may_read(lu: LogicalUnit | None, nexus: Nexus) -> None:
    if lu is not None:
        admit(lu, nexus, read_opcode(lu))


def may_write(lu: LogicalUnit | None, nexus: Nexus) -> None:
    """Reservations, then write protection (configured, a mirrored pair target, or the
    control mode page's SWP), as the LU's WRITE would check them."""
    if lu is None:
        return
    admit(lu, nexus, write_opcode(lu))
    protected = write_protection(lu)
    if protected is not None:
        sense = CheckCondition(protected).sense(lu.descriptor_sense)
        raise Refused(lu, ScsiResult(Status.CHECK_CONDITION, sense=sense))


def write_protection(lu: LogicalUnit) -> Reason | None:
    """Why a write to ``lu`` is refused now, if it is."""
    if not getattr(lu, "read_only", False):
        return None
    soft = getattr(lu, "software_write_protect", False)
    if soft and not getattr(lu, "hardware_read_only", True):
        return Reason.SOFTWARE_WRITE_PROTECTED
    return Reason.WRITE_PROTECTED


async def command(lu: LogicalUnit, nexus: Nexus, cdb: bytes) -> ScsiResult:
    """Send ``cdb`` to ``lu`` on behalf of ``nexus``; :class:`Refused` unless GOOD."""
    result = await lu.execute_for(ScsiCommand(cdb, 0, nexus))
    if result.status is not Status.GOOD:
        raise Refused(lu, result)
    return result
