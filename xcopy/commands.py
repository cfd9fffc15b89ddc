"""EXTENDED COPY (83h: LID1, LID4, COPY OPERATION ABORT) and RECEIVE COPY RESULTS (84h):
the table of :data:`COPY_COMMANDS`, which ``xcopy.services`` gives each LU of a target
(with the target's :class:`~xcopy.manager.CopyManager`) when the LU is built. The LU
layers it over its device type's table (SBC, SSC, file sink), so REPORT SUPPORTED
OPERATION CODES lists the rows of the LUs that serve them and no others.
"""

from __future__ import annotations

from scsi.command import ScsiCommand, ScsiResult, Status
from scsi.logical_unit import LogicalUnit
from scsi.opcodes import OpcodeTable
from scsi.sense import CheckCondition, FieldPointer, Reason
from xcopy import params, results
from xcopy.errors import CopyAborted
from xcopy.manager import CopyManager, Operation, State

_FF4 = (0xFF, 0xFF, 0xFF, 0xFF)


def manager_of(lu: LogicalUnit) -> CopyManager:
    """The copy manager the LU was built with (only LUs built with ``xcopy.services``
    have these commands in their table)."""
    manager = lu.services.copy_manager
    assert isinstance(manager, CopyManager)
    return manager


def _lun_of(lu: LogicalUnit) -> int:
    return next((n for n, other in (lu.lun_map or {}).items() if other is lu), 0)


def _parameter_list(cmd: ScsiCommand) -> bytes:
    length = int.from_bytes(cmd.cdb[10:14], "big")
    data = b"" if cmd.data_out is None else bytes(cmd.data_out[:length])
    if len(data) < length:  # the initiator sent less than the CDB announced
        raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
    return data


def _copy_aborted(lu: LogicalUnit, err: CopyAborted) -> ScsiResult:
    return ScsiResult(Status.CHECK_CONDITION, sense=err.sense(lu.descriptor_sense))


async def extended_copy(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    service_action = cmd.cdb[1] & 0x1F
    copy_list = params.decode(service_action, _parameter_list(cmd))
    if copy_list is None:
        return ScsiResult()
    manager = manager_of(lu)
    try:
        op = manager.start(copy_list, lu, _lun_of(lu), cmd.nexus)
    except CopyAborted as err:
        return _copy_aborted(lu, err)
    if copy_list.immed:  # answered once the split (if any) is taken and the sources pass
        await op.answered.wait()
        await manager.durable(op)
        if op.state in (State.RUNNING, State.COMPLETED):
            return ScsiResult()
        return ScsiResult(Status.CHECK_CONDITION, sense=op.sense)
    await manager.wait(op)
    await manager.durable(op)
    if op.state is State.COMPLETED:
        return ScsiResult()
    if not copy_list.keeps_results:
        manager.forget(op)
    return ScsiResult(Status.CHECK_CONDITION, sense=op.sense)


async def copy_operation_abort(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    op = manager_of(lu).find(cmd.nexus, int.from_bytes(cmd.cdb[2:6], "big"))
    if op is None or op.peer:  # only the gateway running a copy can stop it
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2))
    manager_of(lu).abort(op)
    await op.done.wait()
    return ScsiResult()


async def _operation(lu: LogicalUnit, cmd: ScsiCommand, list_id: int) -> Operation:
    """The copy ``list_id`` of the command's initiator: run here, or (for copies naming
    RBD LUs) by another gateway of the image, from the cluster's copy records."""
    manager = manager_of(lu)
    op = manager.find(cmd.nexus, list_id)
    if op is None:
        lus = [lu, *(lu.lun_map or {}).values()]
        op = await manager.lookup_shared(lus, cmd.nexus, list_id)
    if op is None:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2))
    return op


def _allocation(cmd: ScsiCommand) -> int:
    return int.from_bytes(cmd.cdb[10:14], "big")


async def receive_copy_status(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    op = await _operation(lu, cmd, cmd.cdb[2])
    data = results.copy_status(op)
    if op.state is State.COMPLETED:  # reported: the list identifier is free again
        manager_of(lu).forget(op)
    return ScsiResult(data=data[: _allocation(cmd)])


async def receive_data(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    op = await _operation(lu, cmd, cmd.cdb[2])
    return ScsiResult(data=results.receive_data(op)[: _allocation(cmd)])


async def operating_parameters(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return ScsiResult(data=results.operating_parameters()[: _allocation(cmd)])


async def failed_segment_details(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    op = await _operation(lu, cmd, cmd.cdb[2])
    data = results.failed_segment_details(op)
    if op.finished:
        manager_of(lu).forget(op)
    return ScsiResult(data=data[: _allocation(cmd)])


async def copy_status_lid4(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    op = await _operation(lu, cmd, int.from_bytes(cmd.cdb[2:6], "big"))
    data = results.copy_status_lid4(op)
    if op.finished:
        manager_of(lu).forget(op)
    return ScsiResult(data=data[: _allocation(cmd)])


async def copy_data_lid4(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    op = await _operation(lu, cmd, int.from_bytes(cmd.cdb[2:6], "big"))
    return ScsiResult(data=results.receive_data(op)[: _allocation(cmd)])


def _usage(opcode: int, service_action: int, list_id: tuple[int, ...]) -> bytes:
    """16-byte CDB usage: list identifier bytes from byte 2, the parameter list or
    allocation length at 10-13 (COPY OPERATION ABORT has none), CONTROL."""
    cdb = [opcode, service_action, *list_id]
    cdb += [0] * (10 - len(cdb))
    length = (0, 0, 0, 0) if service_action == results.COPY_OPERATION_ABORT else _FF4
    return bytes([*cdb, *length, 0, 0x07])


_ROWS = (
    (0x83, params.LID1, "EXTENDED COPY(LID1)", extended_copy, ()),
    (0x83, params.LID4, "EXTENDED COPY(LID4)", extended_copy, ()),
    (0x83, results.COPY_OPERATION_ABORT, "COPY OPERATION ABORT", copy_operation_abort, _FF4),
    (0x84, results.COPY_STATUS, "RECEIVE COPY STATUS(LID1)", receive_copy_status, (0xFF,)),
    (0x84, results.RECEIVE_DATA, "RECEIVE COPY DATA(LID1)", receive_data, (0xFF,)),
    (
        0x84,
        results.OPERATING_PARAMETERS,
        "RECEIVE COPY OPERATING PARAMETERS",
        operating_parameters,
        (),
    ),
    (
        0x84,
        results.FAILED_SEGMENT_DETAILS,
        "RECEIVE COPY FAILURE DETAILS(LID1)",
        failed_segment_details,
        (0xFF,),
    ),
    (0x84, results.COPY_STATUS_LID4, "RECEIVE COPY STATUS(LID4)", copy_status_lid4, _FF4),
    (0x84, results.COPY_DATA_LID4, "RECEIVE COPY DATA(LID4)", copy_data_lid4, _FF4),
)


def _table() -> OpcodeTable:
    table = OpcodeTable("third-party copy")
    for opcode, service_action, name, handler, list_id in _ROWS:
        table.command(
            opcode,
            name,
            _usage(opcode, service_action, list_id),
            service_action=service_action,
        )(handler)
    return table


COPY_COMMANDS = _table()
