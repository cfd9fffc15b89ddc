"""What one iSCSI connection keeps: its phase, its tasks, its counters and negotiated limits.

:class:`ConnectionState` is the base of :class:`targetd.iscsi.connection.Connection`; the
modules beside it (replies, read holds, SCSI commands, task management, NOP/Text/Logout) each
add one part of its behaviour over this state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING

from scsi.buffers import BufferPool, Leases, MemoryBudget
from scsi.command import DataHold, FileRange, Nexus, TaskAttribute
from targetd.iscsi.datapath import Burst
from targetd.iscsi.events import CloseConnection, Event
from targetd.iscsi.login import LoginMachine
from targetd.iscsi.pdu import Pdu
from targetd.iscsi.receiver import PduReceiver
from targetd.iscsi.text import TextMachine

if TYPE_CHECKING:
    from targetd.iscsi.session import Session, SessionTable
    from targetd.iscsi.settings import PortalSettings, Settings

# What the connection hands its driver to write: bytes, or a range of a file to send.
Output = bytes | bytearray | memoryview | FileRange

# The largest write a single command may carry; beyond it the command is refused
# without soliciting its data (Block Limits advertise far less).
MAX_WRITE_BUFFER = 64 << 20


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
    # Data-Out sequences we still expect, by TTT
    bursts: dict[int, Burst] = field(default_factory=dict)
    unsolicited_end: int = 0
    next_r2t_offset: int = 0
    r2tsn: int = 0
    delivered: bool = False  # CmdSN order reached it
    windowed: bool = False  # counted in the session's commands in flight
    started: bool = False
    aborted: bool = False


class Phase(Enum):
    LOGIN = auto()
    FULL_FEATURE = auto()
    LOGGED_OUT = auto()
    CLOSED = auto()


class ConnectionState:
    def __init__(
        self,
        settings: Settings,
        portal: PortalSettings,
        sessions: SessionTable,
        now: float = 0.0,
        *,
        pool: BufferPool | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.settings = settings
        self.portal = portal
        self.sessions = sessions
        self.phase = Phase.LOGIN
        self.receiver = PduReceiver(self._placement)
        # Large buffers come from the daemon's pool, charged to this connection's account;
        # a command that does not fit waits in _starved (FIFO) until buffers come back.
        self.pool = pool if pool is not None else BufferPool()
        if budget is None:
            budget = MemoryBudget(1 << 30, 1, 64 << 20)
        self.account = budget.account(self._on_room)
        self._max_command = min(MAX_WRITE_BUFFER, budget.account_limit)
        self._starved: deque[Task] = deque()
        self._room = False
        # Called when buffers came back and waiting commands may proceed: the driver
        # then drains take_events()/take_output() again.
        self.wake: Callable[[], None] = lambda: None
        # Leases of replies handed to the driver, and of those it is still writing.
        self._sending: list[Leases] = []
        self._in_transport: list[Leases] = []
        self.login = LoginMachine(settings, portal, sessions)
        self.session: Session | None = None
        self.text: TextMachine | None = None
        self.nexus: Nexus | None = None
        self.cid = 0
        self.stat_sn = 0
        self.tasks: dict[int, Task] = {}
        # Write buffers placed for immediate data before their command is parsed.
        self._write_buffers: dict[int, tuple[bytearray, Leases | None]] = {}
        # Commands failed or aborted before their data was all in: their late Data-Out is
        # dropped quietly (oldest forgotten first; the dict keeps insertion order).
        self._failed_itts: dict[int, None] = {}
        self._output: list[Output] = []
        # Set by the driver: it can write a FileRange (sendfile). Then large READs may
        # answer with one, unless the Data-In needs a digest computed over its bytes.
        self.sends_files = False
        # A FileRange was put in the output since the driver last cleared this.
        self.file_output = False
        self._events: list[Event] = []
        self._next_ttt = 1
        self._next_token = 1
        self._pending_tmf: dict[int, tuple[Pdu, int]] = {}
        self._pending_logout: Pdu | None = None
        self.header_digest = False
        self.data_digest = False
        self.max_send_data = 8192
        self.max_burst = 262144
        self.first_burst = 65536
        self.immediate_data = True
        self.initial_r2t = True
        self.max_outstanding_r2t = 1
        self.opened_at = now
        self.last_heard = now
        self.now = now
        self._ping_sent_at: float | None = None
        self._ping_ttt = 0
        # READs answered from a file (sendfile), oldest first: (the StatSN of the status
        # that ends them, their hold in the task set). The kernel reads the file's pages as
        # late as when the initiator's socket takes them, so the task completes only when
        # the initiator acknowledges that status (ExpStatSN), or the connection is gone.
        self._holds: deque[tuple[int, DataHold]] = deque()
        self._pinged_at_sn: int | None = None  # StatSN when we last pinged for them

    if TYPE_CHECKING:
        # Where a PDU's data segment lands: the SCSI command path (scsi_commands.py).
        def _placement(self, bhs: bytes) -> memoryview | None: ...

    def _on_room(self) -> None:
        self._room = True
        self.wake()

    def _new_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = (self._next_ttt + 1) & 0x7FFFFFFF or 1
        return ttt

    def _close(self, reason: str) -> None:
        if self.phase is not Phase.CLOSED:
            self.phase = Phase.CLOSED
            self._events.append(CloseConnection(reason))

    @property
    def is_discovery(self) -> bool:
        return self.nexus is None

    # -- sequencing ----------------------------------------------------------------
    def _sequence(self, pdu: Pdu, deliver: Callable[[], None]) -> None:
        assert self.session is not None
        if not self.session.sequence(pdu.cmdsn, pdu.immediate, deliver):
            # RFC 7143 4.2.2.1: outside the window, silently ignored.
            self._drop_staged(pdu.itt)

    def _drop_staged(self, itt: int) -> None:
        staged = self._write_buffers.pop(itt, None)
        if staged is not None and staged[1] is not None:
            # The receiver may still be filling it: never lend it again.
            staged[1].release(reuse=False)

    def _end(self, task: Task) -> None:
        """``task`` leaves the connection's books: its CmdSN slot opens again."""
        self.tasks.pop(task.itt, None)
        if task.windowed:
            task.windowed = False
            if self.session is not None:
                self.session.in_flight -= 1
