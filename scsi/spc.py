"""SPC primary commands, shared by every device type.

``SPC_TABLE`` holds the commands every logical unit serves (INQUIRY, TEST UNIT READY,
REQUEST SENSE, REPORT LUNS, MODE SENSE/SELECT, REPORT SUPPORTED OPERATION CODES and TASK
MANAGEMENT FUNCTIONS, PERSISTENT RESERVE IN/OUT, RESERVE/RELEASE). A device type layers
its own table on it: ``SBC_TABLE = OpcodeTable("sbc", SPC_TABLE)``.
The mode and reservation machinery live in scsi.mode, scsi.pr_in and scsi.pr_out; this module
only puts their handlers in the table.
"""

from __future__ import annotations

from scsi import mode, pr_in, pr_out
from scsi.command import ScsiCommand, ScsiResult
from scsi.logical_unit import LogicalUnit
from scsi.opcodes import SERVICE_ACTION_OPCODES, CommandSpec, OpcodeTable
from scsi.sense import CheckCondition, FieldPointer, Reason, build_sense
from scsi.target import encode_report_luns
from scsi.vpd import standard_inquiry, vpd_page

SPC_TABLE = OpcodeTable("spc")
_cmd = SPC_TABLE.command


def _usage(*mask: int) -> bytes:
    return bytes(mask)


@_cmd(0x00, "TEST UNIT READY", _usage(0x00, 0, 0, 0, 0, 0x07), conflict_exempt=True)
async def test_unit_ready(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return ScsiResult()


@_cmd(
    0x12,
    "INQUIRY",
    _usage(0x12, 0x01, 0xFF, 0xFF, 0xFF, 0x07),
    ua_exempt=True,
    conflict_exempt=True,
)
async def inquiry(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if cdb[1] & 0xFE:  # CMDDT (obsolete) and reserved bits
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=1))
    allocation = int.from_bytes(cdb[3:5], "big")
    if cdb[1] & 0x01:
        data = vpd_page(lu, cdb[2], cmd.nexus)
        if data is None:
            raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2))
    else:
        if cdb[2]:
            raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2))
        data = standard_inquiry(lu)
    return ScsiResult(data=data[:allocation])


@_cmd(
    0x03,
    "REQUEST SENSE",
    _usage(0x03, 0x01, 0, 0, 0xFF, 0x07),
    ua_exempt=True,
    conflict_exempt=True,
)
async def request_sense(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """Reports (and so clears) this nexus's oldest unit attention, else NO SENSE."""
    if cmd.cdb[1] & 0xFE:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1))
    reason = lu.pop_unit_attention(cmd.nexus) or Reason.NO_SENSE
    data = build_sense(reason, descriptor_format=bool(cmd.cdb[1] & 0x01))
    return ScsiResult(data=data[: cmd.cdb[4]])


@_cmd(
    0xA0,
    "REPORT LUNS",
    _usage(0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    ua_exempt=True,
    conflict_exempt=True,
)
async def report_luns(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    select = cdb[2]
    if select not in (0x00, 0x01, 0x02):
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2))
    allocation = int.from_bytes(cdb[6:10], "big")
    if allocation < 16:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(6))
    luns = [] if select == 0x01 else lu.report_luns()  # 01h: well-known LUs only (none)
    return ScsiResult(data=encode_report_luns(luns)[:allocation])


# -- MODE SENSE / MODE SELECT ----------------------------------------------------------------
_cmd(0x1A, "MODE SENSE(6)", _usage(0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x07))(mode.mode_sense6)
_cmd(0x15, "MODE SELECT(6)", _usage(0x15, 0x11, 0, 0, 0xFF, 0x07))(mode.mode_select6)
_cmd(0x5A, "MODE SENSE(10)", _usage(0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x07))(
    mode.mode_sense10
)
_cmd(0x55, "MODE SELECT(10)", _usage(0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07))(
    mode.mode_select10
)


# -- reservations ----------------------------------------------------------------------------
_PRIN_USAGE = (0x5E, None, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07)
_PROUT_USAGE = (0x5F, None, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07)


def _sa_usage(template: tuple[int | None, ...], service_action: int) -> bytes:
    return bytes(service_action if b is None else b for b in template)


for _sa, _name, _handler in (
    (0x00, "PERSISTENT RESERVE IN / READ KEYS", pr_in.read_keys),
    (0x01, "PERSISTENT RESERVE IN / READ RESERVATION", pr_in.read_reservation),
    (0x02, "PERSISTENT RESERVE IN / REPORT CAPABILITIES", pr_in.report_capabilities),
    (0x03, "PERSISTENT RESERVE IN / READ FULL STATUS", pr_in.read_full_status),
):
    _cmd(0x5E, _name, _sa_usage(_PRIN_USAGE, _sa), service_action=_sa, conflict_exempt=True)(
        _handler
    )

# PROUT is exempt from the generic check: each service action applies SPC-4 5.13 itself.
for _sa, _name, _out in (
    (0x00, "PERSISTENT RESERVE OUT / REGISTER", pr_out.register),
    (0x01, "PERSISTENT RESERVE OUT / RESERVE", pr_out.reserve),
    (0x02, "PERSISTENT RESERVE OUT / RELEASE", pr_out.release),
    (0x03, "PERSISTENT RESERVE OUT / CLEAR", pr_out.clear),
    (0x04, "PERSISTENT RESERVE OUT / PREEMPT", pr_out.preempt),
    (0x05, "PERSISTENT RESERVE OUT / PREEMPT AND ABORT", pr_out.preempt),
    (0x06, "PERSISTENT RESERVE OUT / REGISTER AND IGNORE", pr_out.register_and_ignore),
    (0x07, "PERSISTENT RESERVE OUT / REGISTER AND MOVE", pr_out.register_and_move),
):
    _cmd(0x5F, _name, _sa_usage(_PROUT_USAGE, _sa), service_action=_sa, conflict_exempt=True)(_out)

_cmd(0x16, "RESERVE(6)", _usage(0x16, 0, 0, 0, 0, 0x07))(pr_out.reserve_legacy)
_cmd(0x17, "RELEASE(6)", _usage(0x17, 0, 0, 0, 0, 0x07))(pr_out.release_legacy)
_cmd(0x56, "RESERVE(10)", _usage(0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0x07))(pr_out.reserve_legacy)
_cmd(0x57, "RELEASE(10)", _usage(0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0x07))(pr_out.release_legacy)


# -- ALUA: REPORT TARGET PORT GROUPS (scsi/alua.py holds the groups and their states) --------
@_cmd(
    0xA3,
    "REPORT TARGET PORT GROUPS",
    _usage(0xA3, 0xEA, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    service_action=0x0A,
    conflict_exempt=True,
)
async def report_target_port_groups(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    data_format = cmd.cdb[1] >> 5  # 000b: length-only header, 001b: extended header
    if data_format > 1:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=7))
    data = lu.port_groups.report(extended=data_format == 1)
    return ScsiResult(data=data[: int.from_bytes(cmd.cdb[6:10], "big")])


# -- REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS -------------------------
NOMINAL_TIMEOUT = 0  # seconds; 0: not specified
RECOMMENDED_TIMEOUT = 30


def _timeouts() -> bytes:
    return (
        bytes([0x00, 0x0A, 0x00, 0x00])
        + NOMINAL_TIMEOUT.to_bytes(4, "big")
        + RECOMMENDED_TIMEOUT.to_bytes(4, "big")
    )


def _descriptor(spec: CommandSpec, rctd: bool) -> bytes:
    has_sa = spec.service_action is not None
    flags = (0x02 if rctd else 0) | (0x01 if has_sa else 0)
    head = bytes([spec.opcode, 0]) + (spec.service_action or 0).to_bytes(2, "big")
    head += bytes([0, flags]) + spec.cdb_length.to_bytes(2, "big")
    return head + (_timeouts() if rctd else b"")


def _one_command(spec: CommandSpec | None, rctd: bool) -> bytes:
    if spec is None:
        return bytes([0, 0x01, 0, 0])  # SUPPORT 001b: not supported
    head = bytes([0, (0x80 if rctd else 0) | 0x03]) + spec.cdb_length.to_bytes(2, "big")
    return head + spec.usage + (_timeouts() if rctd else b"")


def _rsoc_options(cdb: bytes) -> tuple[int, int, int]:
    return cdb[2] & 0x07, cdb[3], int.from_bytes(cdb[4:6], "big")


@_cmd(
    0xA3,
    "REPORT SUPPORTED OPERATION CODES",
    _usage(0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    service_action=0x0C,
    conflict_exempt=True,
)
async def report_supported_operation_codes(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    rctd = bool(cdb[2] & 0x80)
    options, opcode, service_action = _rsoc_options(cdb)
    allocation = int.from_bytes(cdb[6:10], "big")
    table = lu.table
    if options == 0:
        body = b"".join(_descriptor(spec, rctd) for spec in table)
        data = len(body).to_bytes(4, "big") + body
    elif options in (1, 2, 3):
        has_sa = opcode in SERVICE_ACTION_OPCODES and table.has_opcode(opcode)
        if (options == 1 and has_sa) or (options == 2 and not has_sa and table.has_opcode(opcode)):
            raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2, bit=2))
        if options == 1 or (options == 3 and not has_sa):
            spec = table.get(opcode)
        else:
            spec = table.get(opcode, service_action)
        data = _one_command(spec, rctd)
    else:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2, bit=2))
    return ScsiResult(data=data[:allocation])


@_cmd(
    0xA3,
    "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
    _usage(0xA3, 0x0D, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
    service_action=0x0D,
    conflict_exempt=True,
)
async def report_supported_tmfs(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    # ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET.
    supported = 0x80 | 0x40 | 0x10 | 0x08 | 0x02
    if cmd.cdb[2] & 0x80:  # REPD: the extended format with its additional length
        data = bytes([supported, 0, 0, 0x0C]) + bytes(12)
    else:
        data = bytes([supported, 0, 0, 0])
    return ScsiResult(data=data[: int.from_bytes(cmd.cdb[6:10], "big")])
