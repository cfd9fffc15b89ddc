"""What the connection machine tells its driver.

The events are facts (frozen dataclasses) the driver acts on: run this command, cancel
these, reset that LUN everywhere, a session started, close the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from scsi.command import Nexus, ScsiCommand

if TYPE_CHECKING:
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


class TaskHandle(Protocol):
    """A command of a connection, opaque to the driver: a key for its own bookkeeping
    (which asyncio task runs it), handed back to ``Connection.scsi_done``."""


# -- events for the driver ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ExecuteCommand:
    task: TaskHandle
    command: ScsiCommand


@dataclass(frozen=True, slots=True)
class AbortTasks:
    """Cancel these commands; then call ``Connection.aborts_finished(token)``."""

    tasks: tuple[TaskHandle, ...]
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
