"""What the connection machine tells its driver, and the task records it keeps.

The events are facts (frozen dataclasses) the driver acts on: run this command, cancel
these, reset that LUN everywhere, a session started, close the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scsi.command import Nexus, ScsiCommand, TaskAttribute

if TYPE_CHECKING:
    from scsi.buffers import Leases
    from targetd.iscsi.session import Session


class TmfFunction:
    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse:
    COMPLETE = 0
    NO_TASK = 1
    NO_LUN = 2
    NOT_SUPPORTED = 5
    REJECTED = 255


@dataclass(eq=False, slots=True)
class Task:
    """A SCSI command on this connection from arrival to its final status."""

    itt: int
    lun: int
    lun_raw: bytes
    cdb: bytes
    cmdsn: int
    edtl: int
    read: bool
    write: bool
    attribute: TaskAttribute
    buffer: bytearray | None = None
    # The buffers it holds (its write buffer, its Data-In), charged to the connection.
    leases: Leases | None = None
    received: int = 0
    # Data-Out sequences we still expect: TTT -> [next offset, end offset, next DataSN]
    bursts: dict[int, list[int]] = field(default_factory=dict)
    unsolicited_end: int = 0
    next_r2t_offset: int = 0
    r2tsn: int = 0
    delivered: bool = False  # CmdSN order reached it
    windowed: bool = False  # counted in the session's commands in flight
    started: bool = False
    aborted: bool = False


# -- events for the driver ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ExecuteCommand:
    task: Task
    command: ScsiCommand


@dataclass(frozen=True, slots=True)
class AbortTasks:
    """Cancel these commands; then call ``Connection.aborts_finished(token)``."""

    tasks: tuple[Task, ...]
    token: int


@dataclass(frozen=True, slots=True)
class ResetRequested:
    """A LUN or target reset: the driver aborts matching tasks on every session."""

    lun: int | None
    nexus: Nexus
    token: int
    # RFC 7143 11.5.1: after a cold reset the target closes every connection.
    cold: bool = False


@dataclass(frozen=True, slots=True)
class SessionStarted:
    session: Session


@dataclass(frozen=True, slots=True)
class CloseConnection:
    reason: str


Event = ExecuteCommand | AbortTasks | ResetRequested | SessionStarted | CloseConnection
