"""Sessions: the CmdSN window they share and the table that binds logins to them.

A session outlives any one connection's view of it: the command window (ExpCmdSN,
MaxCmdSN) belongs here, so that with several connections the commands still reach the
SCSI layer in CmdSN order. The table answers the login machine's one question -- which
TSIH does this login get -- and handles reinstatement of a session with the same ISID.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from targetd.iscsi.pdu import serial_le

if TYPE_CHECKING:
    from targetd.iscsi.params import SessionParams
    from targetd.iscsi.settings import TargetSettings

# Commands the target accepts ahead of ExpCmdSN; MaxCmdSN = ExpCmdSN + window - 1.
COMMAND_WINDOW = 128


class LoginRefusedError(Exception):
    """Raised by :meth:`SessionTable.bind`; the login machine answers with this status."""

    def __init__(self, status_class: int, status_detail: int, message: str = "") -> None:
        super().__init__(message or f"login refused {status_class:02x}{status_detail:02x}")
        self.status_class = status_class
        self.status_detail = status_detail


@dataclass(eq=False)
class Session:
    tsih: int
    initiator_name: str
    isid: bytes
    target_name: str | None
    session_type: str
    params: SessionParams | None = None
    target: TargetSettings | None = None
    exp_cmdsn: int = 0
    window: int = COMMAND_WINDOW
    # Commands delivered and not yet ended: each holds a CmdSN slot of the window, so a
    # client cannot queue more than the window however fast it sends.
    in_flight: int = 0
    connections: list[Any] = field(default_factory=list)
    # Non-immediate commands that arrived ahead of ExpCmdSN (only with several
    # connections can that happen): CmdSN -> deliver callback.
    _waiting: dict[int, Callable[[], None]] = field(default_factory=dict)
    closed: bool = False

    @property
    def max_cmdsn(self) -> int:
        # Never below ExpCmdSN - 1 (RFC 7143 4.2.2.1: an empty window, not a negative one).
        room = self.window - self.in_flight
        return (self.exp_cmdsn + (room if room > 0 else 0) - 1) & 0xFFFFFFFF

    @property
    def initiator_port(self) -> str:
        return f"{self.initiator_name},i,0x{self.isid.hex()}"

    def in_window(self, cmdsn: int) -> bool:
        return serial_le(self.exp_cmdsn, cmdsn) and serial_le(cmdsn, self.max_cmdsn)

    def next_in_order(self, cmdsn: int) -> bool:
        """Whether a non-immediate ``cmdsn`` is delivered now with nothing queued behind it:
        then ExpCmdSN moves past it and the caller delivers it at once (what :meth:`sequence`
        does for it, without a callback to build per command)."""
        if cmdsn == self.exp_cmdsn and not self._waiting:
            self.exp_cmdsn = (cmdsn + 1) & 0xFFFFFFFF
            return True
        return False

    def sequence(self, cmdsn: int, immediate: bool, deliver: Callable[[], None]) -> bool:
        """Deliver a command in CmdSN order. False: outside the window, to be dropped.

        RFC 7143 3.2.2.1: an immediate command is delivered at once and does not
        advance ExpCmdSN; a non-immediate one is delivered when its turn comes.
        """
        if immediate:
            deliver()
            return True
        if cmdsn == self.exp_cmdsn:
            self.exp_cmdsn = (self.exp_cmdsn + 1) & 0xFFFFFFFF
            deliver()
            while self.exp_cmdsn in self._waiting:
                queued = self._waiting.pop(self.exp_cmdsn)
                self.exp_cmdsn = (self.exp_cmdsn + 1) & 0xFFFFFFFF
                queued()
            return True
        if self.in_window(cmdsn) and cmdsn not in self._waiting:
            self._waiting[cmdsn] = deliver
            return True
        return False


class SessionTable:
    """Every live session of the daemon, by TSIH and by (initiator, ISID, target)."""

    def __init__(self, max_sessions: int = 64, max_connections: int = 1) -> None:
        self.max_sessions = max_sessions
        self.max_connections = max_connections
        self._by_tsih: dict[int, Session] = {}
        self._tsihs = itertools.cycle(range(1, 0x10000))
        # Called with a session that a new login with the same ISID replaces.
        self.on_reinstate: Callable[[Session], None] = lambda s: None

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_tsih.values()))

    def __len__(self) -> int:
        return len(self._by_tsih)

    def get(self, tsih: int) -> Session | None:
        return self._by_tsih.get(tsih)

    def find(self, initiator_name: str, isid: bytes, target_name: str | None) -> Session | None:
        for s in self._by_tsih.values():
            if (s.initiator_name, s.isid, s.target_name) == (initiator_name, isid, target_name):
                return s
        return None

    def bind(
        self,
        *,
        initiator_name: str,
        isid: bytes,
        tsih: int,
        target_name: str | None,
        session_type: str,
        cid: int,
    ) -> int:
        if tsih:
            session = self._by_tsih.get(tsih)
            if session is None or (session.initiator_name, session.isid) != (
                initiator_name,
                isid,
            ):
                raise LoginRefusedError(0x02, 0x0A, "session does not exist")
            live = [c for c in session.connections if getattr(c, "cid", None) != cid]
            if len(live) >= min(self.max_connections, _max_conns(session)):
                raise LoginRefusedError(0x02, 0x06, "too many connections")
            return tsih
        old = self.find(initiator_name, isid, target_name)
        if old is not None:
            # Session reinstatement (RFC 7143 6.3.5): the old session ends now.
            self.remove(old)
            self.on_reinstate(old)
        if len(self._by_tsih) >= self.max_sessions:
            raise LoginRefusedError(0x03, 0x02, "out of resources: too many sessions")
        new_tsih = next(t for t in self._tsihs if t not in self._by_tsih)
        self._by_tsih[new_tsih] = Session(new_tsih, initiator_name, isid, target_name, session_type)
        return new_tsih

    def remove(self, session: Session) -> None:
        session.closed = True
        self._by_tsih.pop(session.tsih, None)


def _max_conns(session: Session) -> int:
    return session.params.max_connections if session.params else 1
