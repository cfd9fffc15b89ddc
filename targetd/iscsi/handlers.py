"""The handler of each opcode an initiator may send in full-feature phase."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from targetd.iscsi.nop_text_logout import NopTextLogout
from targetd.iscsi.pdu import Op, Pdu
from targetd.iscsi.scsi_commands import ScsiCommands
from targetd.iscsi.task_management import TaskManagement

if TYPE_CHECKING:
    from targetd.iscsi.connection import Connection

# The handler of each opcode in full-feature phase: the methods as plain functions, called with
# the connection, so that mypyc (docs/performance.md, "Compiled hot path") sees plain functions.
HANDLERS: dict[int, Callable[[Connection, Pdu], None]] = {
    Op.NOP_OUT: NopTextLogout._on_nop_out,
    Op.SCSI_COMMAND: ScsiCommands._on_scsi_command,
    Op.TASK_MGMT_REQUEST: TaskManagement._on_task_mgmt,
    Op.TEXT_REQUEST: NopTextLogout._on_text,
    Op.DATA_OUT: ScsiCommands._on_data_out,
    Op.LOGOUT_REQUEST: NopTextLogout._on_logout,
    Op.SNACK_REQUEST: NopTextLogout._on_snack,
    Op.LOGIN_REQUEST: NopTextLogout._on_login_in_ffp,
}
