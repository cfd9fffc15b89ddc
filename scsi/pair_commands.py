"""The vendor-specific volume pair commands: PAIR OUT (C4h) and PAIR IN (C5h).

Every block LU answers them (see docs/pairs.md for why no separate command device): the
CDB names the pair by a LUN of it, FFFFh meaning the LU the command was sent to. The
service action in byte 1 picks the operation from :data:`PAIR_OUT_ACTIONS` or
:data:`PAIR_IN_ACTIONS`. The engine's refusals (:class:`backing.pairs.PairError`) become
CHECK CONDITION through :data:`REFUSALS`; the layouts below are the documented ones.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from construct import Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

from backing.pairs import BackupPolicy, ErrorCode, PairError, PairService
from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import LogicalUnit
from scsi.sbc import SBC_TABLE
from scsi.sense import CheckCondition, FieldPointer, Reason

if TYPE_CHECKING:
    from scsi.block_device import BlockDevice

PAIR_OUT = 0xC4
PAIR_IN = 0xC5
ADDRESSED_LUN = 0xFFFF
MAX_NAME = 32
_NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


class PairControl(Protocol):
    """A target's view of the daemon's pairs: its :class:`PairService` and which of its
    LUNs are which volumes. A block LU receives it when it is built."""

    service: PairService

    def volume_of(self, lun: int) -> str | None:
        """The volume id of block LUN ``lun`` of this target; None if there is none."""
        ...

    def lun_of(self, volume_id: str) -> int | None:
        """The LUN of this target that is volume ``volume_id``; None if none is."""
        ...


# A synthetic command of each kind, to ask a LU's reservations whether a nexus may read
# or write it (the same rule as the nexus' own READ/WRITE to that LU would meet).
_PROBE_READ = bytes([0x28]) + bytes(9)
_PROBE_WRITE = bytes([0x2A]) + bytes(9)


class NexusAccess:
    """The :class:`backing.pairs.Access` of one command: ``nexus`` may read or write a
    volume only if its own READ or WRITE to that LU would not meet a reservation.

    Every LU the operation touches is checked, not only the one addressed: a CREATE sent
    to LUN 0 whose copy would overwrite LUN 1, held by another nexus under a Write
    Exclusive reservation, gets RESERVATION CONFLICT and nothing is written.
    """

    def __init__(
        self, nexus: Nexus, control: PairControl, lun_map: Mapping[int, LogicalUnit]
    ) -> None:
        self.nexus = nexus
        self.control = control
        self.lun_map = lun_map

    def check(self, reads: Sequence[str], writes: Sequence[str]) -> None:
        for volumes, probe in ((reads, _PROBE_READ), (writes, _PROBE_WRITE)):
            for volume in volumes:
                lun = self.control.lun_of(volume)
                lu = None if lun is None else self.lun_map.get(lun)
                if lu is None or lun is None:  # not this target's: never reachable
                    raise PairError(ErrorCode.RESERVATION_CONFLICT, f"{volume} not reachable")
                probe_cmd = ScsiCommand(probe, lun, self.nexus)
                if lu.reservation_conflict(probe_cmd, False):
                    raise PairError(
                        ErrorCode.RESERVATION_CONFLICT,
                        f"LUN {lun} is reserved by another initiator",
                    )


REFUSALS: dict[ErrorCode, Reason] = {
    ErrorCode.UNKNOWN_PAIR: Reason.PAIR_NOT_FOUND,
    ErrorCode.WRONG_STATE: Reason.PAIR_WRONG_STATE,
    ErrorCode.SIZE_MISMATCH: Reason.PAIR_SIZE_MISMATCH,
    ErrorCode.VOLUME_IN_PAIR: Reason.PAIR_LUN_ALREADY_PAIRED,
    ErrorCode.NAME_IN_USE: Reason.PAIR_NAME_IN_USE,
    ErrorCode.SAME_VOLUME: Reason.PAIR_SAME_LUN,
    ErrorCode.READ_ONLY_VOLUME: Reason.PAIR_LUN_READ_ONLY,
    ErrorCode.UNKNOWN_VOLUME: Reason.INVALID_FIELD_IN_CDB,
    ErrorCode.BAD_NAME: Reason.INVALID_FIELD_IN_PARAMETER_LIST,
    ErrorCode.BAD_POLICY: Reason.INVALID_FIELD_IN_CDB,
    # Cannot happen here: a target's pairs are found by LUN, never by a bare name.
    ErrorCode.AMBIGUOUS_NAME: Reason.INVALID_FIELD_IN_CDB,
    ErrorCode.RESERVATION_CONFLICT: Reason.INVALID_FIELD_IN_CDB,  # answered as a status
    # A split or resync of a pair in a group acts on the group: a member that is missing.
    ErrorCode.UNKNOWN_GROUP: Reason.PAIR_NOT_FOUND,
    ErrorCode.IN_GROUP: Reason.PAIR_ALREADY_IN_GROUP,  # GROUP JOIN of a pair in another group
    # Two gateways: the other one runs the pair and keeps its lock now; retried, as a write.
    ErrorCode.ELSEWHERE: Reason.LU_NOT_ACCESSIBLE_TRANSITIONING,
    ErrorCode.TOO_MANY_SECONDARIES: Reason.PAIR_TOO_MANY_SECONDARIES,
    # PAIR LUN names a primary with several secondaries: name the secondary's LUN.
    ErrorCode.AMBIGUOUS_VOLUME: Reason.PAIR_LUN_AMBIGUOUS,
}

MAX_SECONDARIES_REPORTED = 3
NO_LUN = 0xFFFF
# PAIR IN / REPORT PAIR STATUS data (136 bytes; the first 96 are the original layout, the
# first 128 the layout before 1:N).
PAIR_STATUS = Struct(
    "status_data_length" / Int16ub,  # bytes after this field: 134
    "source_state" / Int8ub,
    "target_state" / Int8ub,
    "suspend_reason" / Int8ub,
    "percent_in_sync" / Int8ub,
    "source_lun" / Int16ub,
    "target_lun" / Int16ub,
    "backup_policy" / Int8ub,  # the policy a backup follows (BackupPolicy); 0 for no pair
    "policy_flags" / Int8ub,  # bit 0: set on the pair (SET BACKUP POLICY), else configured
    "chunk_size" / Int32ub,
    "total_chunks" / Int64ub,
    "dirty_chunks" / Int64ub,
    "changed_chunks" / Int64ub,
    "copy_rate" / Int64ub,  # bytes per second
    "copied_bytes" / Int64ub,
    "split_time_ms" / Int64ub,  # Unix time of the split in ms, 0 if not split
    "name" / Bytes(MAX_NAME),  # ASCII, NUL-padded
    "group" / Bytes(MAX_NAME),  # the consistency group's name, NUL-padded; empty for none
    "secondaries" / Int8ub,  # pairs of this pair's primary (1..3); 0 for no pair
    "reserved" / Int8ub,
    # The target (secondary) LUN of each pair of the primary, by pair name; FFFFh unused.
    "secondary_luns" / Int16ub[MAX_SECONDARIES_REPORTED],
)
STATUS_LENGTH = PAIR_STATUS.sizeof()

_PAIR_OUT_USAGE = bytes([PAIR_OUT, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0, 0, 0])
_PAIR_OUT_USAGE += bytes([0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07])
_PAIR_IN_USAGE = bytes([PAIR_IN, 0x1F, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0])
_PAIR_IN_USAGE += bytes([0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07])


def _control(lu: BlockDevice) -> PairControl:
    control = lu.pair_control
    if control is None:  # a block LU built without a pair manager (tests, tools)
        raise CheckCondition(Reason.INVALID_OPCODE, FieldPointer(0, bit=7))
    return control


def _lun_field(lu: BlockDevice, cmd: ScsiCommand, byte: int) -> tuple[int, str]:
    """The LUN a CDB field names and its volume id."""
    lun = int.from_bytes(cmd.cdb[byte : byte + 2], "big")
    if lun == ADDRESSED_LUN:
        lun = cmd.lun
    volume = _control(lu).volume_of(lun)
    if volume is None:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(byte))
    return lun, volume


def _access(lu: BlockDevice, cmd: ScsiCommand) -> NexusAccess:
    return NexusAccess(cmd.nexus, _control(lu), lu.lun_map or {})


def _reserved_zero(cmd: ScsiCommand, *spans: tuple[int, int]) -> None:
    for start, stop in spans:
        for i in range(start, stop):
            if cmd.cdb[i]:
                raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(i))


class _Conflict(Exception):
    """A volume the operation touches is reserved by another nexus."""


async def _refusing(call: Awaitable[object]) -> None:
    try:
        await call
    except PairError as err:
        if err.code is ErrorCode.RESERVATION_CONFLICT:
            raise _Conflict(str(err)) from err
        info = None
        if err.phase is not None:
            info = (err.phase.source << 8) | err.phase.target
        raise CheckCondition(REFUSALS[err.code], information=info, message=str(err)) from err


# -- PAIR OUT ---------------------------------------------------------------------------
def _policy_field(cmd: ScsiCommand, byte: int) -> BackupPolicy | None:
    """A BACKUP POLICY byte: 00h none (the configured one), 01h..04h a policy."""
    value = cmd.cdb[byte]
    if not value:
        return None
    if value not in BackupPolicy._value2member_map_:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(byte))
    return BackupPolicy(value)


async def _create(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    _reserved_zero(cmd, (7, 10), (14, 15))
    policy = _policy_field(cmd, 6)
    source, source_volume = _lun_field(lu, cmd, 2)
    target, target_volume = _lun_field(lu, cmd, 4)
    raw, used = _name_parameter(cmd)
    name = raw or f"lun{source}-lun{target}"
    service = _control(lu).service
    await _refusing(
        service.create(name, source_volume, target_volume, policy, access=_access(lu, cmd))
    )
    return ScsiResult(data_out_used=used)


def _name_parameter(cmd: ScsiCommand) -> tuple[str, int | None]:
    """The name in the parameter data (PARAMETER LIST LENGTH in bytes 10-13, at most 32;
    trailing NULs ignored): (name, data_out_used). "" for length 0."""
    length = int.from_bytes(cmd.cdb[10:14], "big")
    if length > MAX_NAME:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(10))
    data = bytes(cmd.data_out or b"")
    if len(data) < length:
        raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR, FieldPointer(10))
    raw = data[:length].rstrip(b"\0")
    if length and not _NAME.fullmatch(raw):
        raise CheckCondition(Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(0, in_cdb=False))
    return raw.decode(), length if len(data) != length else None


async def _group_join(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    """The pair PAIR LUN is in joins the group the parameter data names (made if absent)."""
    _reserved_zero(cmd, (4, 10), (14, 15))
    _, volume = _lun_field(lu, cmd, 2)
    name, used = _name_parameter(cmd)
    if not name:  # a group has a name: there is no default one
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(10))
    service = _control(lu).service
    await _refusing(service.join_group(name, access=_access(lu, cmd), volume=volume))
    return ScsiResult(data_out_used=used)


PairOperation = Callable[[PairService, str, NexusAccess], Awaitable[object]]
Handler = Callable[["BlockDevice", ScsiCommand], Awaitable[ScsiResult]]


def _on_pair(operation: PairOperation) -> Handler:
    async def handler(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
        _reserved_zero(cmd, (4, 15))
        _, volume = _lun_field(lu, cmd, 2)
        await _refusing(operation(_control(lu).service, volume, _access(lu, cmd)))
        return ScsiResult()

    return handler


async def _set_backup_policy(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    _reserved_zero(cmd, (5, 15))
    policy = _policy_field(cmd, 4)
    _, volume = _lun_field(lu, cmd, 2)
    service = _control(lu).service
    await _refusing(service.set_backup_policy(policy, access=_access(lu, cmd), volume=volume))
    return ScsiResult()


PAIR_OUT_ACTIONS: dict[int, Callable[[BlockDevice, ScsiCommand], Awaitable[ScsiResult]]] = {
    0x01: _create,
    0x02: _on_pair(lambda pairs, volume, access: pairs.split(access=access, volume=volume)),
    0x03: _on_pair(lambda pairs, volume, access: pairs.resync(access=access, volume=volume)),
    0x04: _on_pair(lambda pairs, volume, access: pairs.delete(access=access, volume=volume)),
    0x05: _set_backup_policy,
    0x06: _on_pair(
        lambda pairs, volume, access: pairs.reverse_resync(access=access, volume=volume)
    ),
    0x07: _group_join,
    0x08: _on_pair(lambda pairs, volume, access: pairs.leave_group(access=access, volume=volume)),
}


# -- PAIR IN ----------------------------------------------------------------------------
async def _report_status(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
    _reserved_zero(cmd, (4, 10), (14, 15))
    lun, volume = _lun_field(lu, cmd, 2)
    allocation = int.from_bytes(cmd.cdb[10:14], "big")
    control = _control(lu)
    # A primary with several secondaries reports its first pair (by name); naming a
    # secondary's LUN reports that pair. Bytes 128-135 list them all.
    mine = control.service.pairs_of(volume)
    status = mine[0] if mine else None
    siblings = [] if status is None else control.service.pairs_of(status.source)
    luns = [ADDRESSED_LUN if (n := control.lun_of(s.target)) is None else n for s in siblings]
    fields = {
        "status_data_length": STATUS_LENGTH - 2,
        "source_state": 0,
        "target_state": 0,
        "suspend_reason": 0,
        "percent_in_sync": 0,
        "source_lun": lun,
        "target_lun": lun,
        "backup_policy": 0,
        "policy_flags": 0,
        "chunk_size": 0,
        "total_chunks": 0,
        "dirty_chunks": 0,
        "changed_chunks": 0,
        "copy_rate": 0,
        "copied_bytes": 0,
        "split_time_ms": 0,
        "name": bytes(MAX_NAME),
        "group": bytes(MAX_NAME),
        "secondaries": len(siblings),
        "reserved": 0,
        "secondary_luns": (luns + [NO_LUN] * MAX_SECONDARIES_REPORTED)[:MAX_SECONDARIES_REPORTED],
    }
    if status is not None:
        source = control.lun_of(status.source)
        target = control.lun_of(status.target)
        fields.update(
            source_state=int(status.phase.source),
            target_state=int(status.phase.target),
            suspend_reason=int(status.reason),
            percent_in_sync=int(status.percent_in_sync),
            source_lun=ADDRESSED_LUN if source is None else source,
            target_lun=ADDRESSED_LUN if target is None else target,
            backup_policy=int(status.backup_policy),
            policy_flags=int(status.backup_policy_set),
            chunk_size=status.chunk_size,
            total_chunks=status.chunks,
            dirty_chunks=status.dirty_chunks,
            changed_chunks=status.changed_chunks,
            copy_rate=int(status.copy_rate),
            copied_bytes=status.copied_bytes,
            split_time_ms=int((status.split_time or 0) * 1000),
            name=status.name.encode().ljust(MAX_NAME, b"\0"),
            group=(status.group or "").encode().ljust(MAX_NAME, b"\0"),
        )
    return ScsiResult(data=PAIR_STATUS.build(fields)[:allocation])


PAIR_IN_ACTIONS: dict[int, Callable[[BlockDevice, ScsiCommand], Awaitable[ScsiResult]]] = {
    0x00: _report_status,
}


def _dispatch(
    actions: dict[int, Callable[[BlockDevice, ScsiCommand], Awaitable[ScsiResult]]],
) -> Callable[[BlockDevice, ScsiCommand], Awaitable[ScsiResult]]:
    async def handler(lu: BlockDevice, cmd: ScsiCommand) -> ScsiResult:
        action = actions.get(cmd.cdb[1] & 0x1F)
        if action is None or cmd.cdb[1] & 0xE0:
            raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=4))
        try:
            return await action(lu, cmd)
        except _Conflict:
            return ScsiResult(Status.RESERVATION_CONFLICT)

    return handler


SBC_TABLE.command(PAIR_OUT, "PAIR OUT", _PAIR_OUT_USAGE)(_dispatch(PAIR_OUT_ACTIONS))
SBC_TABLE.command(PAIR_IN, "PAIR IN", _PAIR_IN_USAGE, conflict_exempt=True)(
    _dispatch(PAIR_IN_ACTIONS)
)

__all__ = ["PAIR_IN", "PAIR_OUT", "PAIR_STATUS", "REFUSALS", "NexusAccess", "PairControl"]
