"""One iSCSI connection as a sans-I/O state machine: PDUs in, PDUs and events out.

The driver (``targetd.server``) feeds received bytes through :attr:`Connection.receiver`,
then drains :meth:`take_output` (buffers to write, in order) and :meth:`take_events`
(SCSI commands to run, tasks to abort, a close). When a SCSI command finishes it calls
:meth:`scsi_done`. Time comes in through :meth:`tick`, so keepalives test without sleeping.

The connection's state is :class:`ConnectionState` (connection_state.py); what it does with
it is spread over one module per part: what it sends (replies.py), the READs held until
acknowledged (read_holds.py), SCSI commands and their data (scsi_commands.py), task
management (task_management.py), NOP, Text and Logout (nop_text_logout.py), and the handler
of each opcode (handlers.py). This module holds the driver's calls and login.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from scsi.command import Nexus, ScsiResult
from targetd.iscsi import pdu as P
from targetd.iscsi.connection_state import ConnectionState, Output, Phase, Task
from targetd.iscsi.events import (
    AbortTasks,
    CloseConnection,
    Event,
    ExecuteCommand,
    ResetRequested,
    SessionStarted,
    TaskHandle,
)
from targetd.iscsi.handlers import HANDLERS
from targetd.iscsi.pdu import Op, Pdu, RejectReason, put_u32
from targetd.iscsi.read_holds import ReadHolds
from targetd.iscsi.receiver import IscsiProtocolError
from targetd.iscsi.task_management import TaskManagement
from targetd.iscsi.text import TextMachine

if TYPE_CHECKING:
    from targetd.iscsi.login import LoginDone

__all__ = [
    "AbortTasks",
    "CloseConnection",
    "Connection",
    "ConnectionState",
    "Event",
    "ExecuteCommand",
    "Output",
    "Phase",
    "ResetRequested",
    "SessionStarted",
    "Task",
    "TaskHandle",
]


class Connection(TaskManagement, ReadHolds):
    # -- driver API ----------------------------------------------------------------
    def take_output(self) -> list[Output]:
        """What to write, in order: bytes, and FileRanges where :attr:`sends_files`. The
        buffers behind it stay lent until the driver calls :meth:`output_sent`."""
        if self._sending:
            self._in_transport += self._sending
            self._sending = []
        out, self._output = self._output, []
        return out

    def take_events(self) -> list[Event]:
        if self._room:
            self._room = False
            self._retry()
        events, self._events = self._events, []
        return events

    def output_sent(self) -> None:
        """Everything taken with :meth:`take_output` has left: its buffers come back."""
        if self._in_transport:
            done, self._in_transport = self._in_transport, []
            for leases in done:
                leases.release()

    @property
    def starved(self) -> bool:
        """Commands wait for buffers to come back (the driver should report output
        sent as soon as it is)."""
        return bool(self._starved)

    def receive(self, items: list[Pdu | IscsiProtocolError]) -> None:
        self.last_heard = self.now
        self._ping_sent_at = None
        if self._holds:
            # Every initiator PDU carries ExpStatSN at byte 28; the last one of the batch
            # knows the most. Releasing before the others are dispatched is safe: the
            # initiator had the data when it sent it.
            for item in reversed(items):
                if not isinstance(item, IscsiProtocolError):
                    self._acknowledged(item.u32(28))
                    break
        for item in items:
            if self.phase in (Phase.CLOSED, Phase.LOGGED_OUT):
                return
            if isinstance(item, IscsiProtocolError):
                self._protocol_error(item)
                continue
            try:
                self._dispatch(item)
            except IscsiProtocolError as err:
                self._protocol_error(err)

    def data_received(self, nbytes: int) -> None:
        """Convenience for drivers and tests: account bytes then process the PDUs."""
        try:
            items = self.receiver.buffer_updated(nbytes)
        except IscsiProtocolError as err:
            items = [err]
        self.receive(items)

    def stalled(self, seconds: float, now: float) -> None:
        """The driver could not run for ``seconds`` (a host with more runnable processes
        than cores): what arrived meanwhile is still unread, or was stamped with the
        clock of before the stall. That time is not the initiator's silence, so the
        timers below skip it (never past ``now``)."""
        self.opened_at = min(self.opened_at + seconds, now)
        self.last_heard = min(self.last_heard + seconds, now)
        if self._ping_sent_at is not None:
            self._ping_sent_at = min(self._ping_sent_at + seconds, now)

    def tick(self, now: float) -> None:
        """Keepalive: ping a silent initiator; drop one that does not answer, and a
        connection that has not finished logging in within ``login_timeout``, or has sent
        nothing for ``login_step_timeout`` during login (the timers of :class:`Settings`).

        A connection that is not logged in holds a socket and a slot, so it gets little time.
        """
        self.now = now
        settings = self.settings
        if self.phase is Phase.LOGIN and (
            now - self.opened_at > settings.login_timeout
            or now - self.last_heard > settings.login_step_timeout
        ):
            self._close("login not completed in time")
            return
        if self.phase is not Phase.FULL_FEATURE:
            return
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at > settings.nop_timeout:
                self._close("initiator did not answer NOP-In")
            return
        if now - self.last_heard > settings.nop_interval and not self.tasks:
            self._ping_ttt = self._new_ttt()
            hdr = P.new_header(Op.NOP_IN, 0x80, lun=bytes(8))
            put_u32(hdr, 20, self._ping_ttt)
            self._send(hdr, advance_statsn=False)
            self._ping_sent_at = now

    def request_logout(self, within: int) -> bool:
        """Ask the initiator to log out within ``within`` seconds (Async Message, event 1).

        RFC 7143 11.9.1: sent before a planned shutdown, so initiators log out cleanly
        instead of finding the connection reset. False if this connection cannot be asked.
        """
        if self.phase is not Phase.FULL_FEATURE or self._pending_logout is not None:
            return False
        hdr = P.new_header(Op.ASYNC_MESSAGE, 0x80, lun=bytes(8))
        hdr[36] = 1  # AsyncEvent: target requests logout
        P.put_u16(hdr, 42, within)  # Parameter3: seconds to log out in
        self._send(hdr)
        return True

    def scsi_done(self, handle: TaskHandle, result: ScsiResult) -> None:
        """The SCSI layer finished the command ``handle``: send its data and status."""
        task: Task = handle  # type: ignore[assignment]
        leases = task.leases
        if (
            self.tasks.get(task.itt) is not task
            or task.aborted
            or (result.hold is not None and self.phase is Phase.CLOSED)
        ):
            # Aborted; or a READ sent from a file that ended after the target closed the
            # connection (its sending side is shut, or is about to be): it gets no reply,
            # the initiator retries it, and its hold would only keep the LU's task set and
            # the pair engine waiting for an acknowledgement that cannot come.
            if leases is not None:
                leases.release(reuse=False)
            if result.hold is not None:
                result.hold.release()  # nothing of it is sent
            return
        del self.tasks[task.itt]
        if task.windowed:  # as _end, inline: this is the path of every command
            task.windowed = False
            self.session.in_flight -= 1  # type: ignore[union-attr]
        self._respond(task, result)
        if result.hold is not None:
            # The status just sent ends the READ: StatSN has moved past it.
            self._holds.append(((self.stat_sn - 1) & 0xFFFFFFFF, result.hold))
            result.hold.on_wanted(self._ping_for_holds)
        if leases is not None:
            leases.settle()
            if result.data is not None and leases.held:
                self._sending.append(leases)  # given back once the driver has sent it
            else:
                leases.release()
        if self._pending_logout is not None:
            self._maybe_finish_logout()

    def closed(self) -> list[TaskHandle]:
        """The transport is gone: returns the commands still running, to cancel."""
        self.phase = Phase.CLOSED
        running: list[TaskHandle] = [t for t in self.tasks.values() if t.started]
        for t in list(self.tasks.values()):
            self._forget(t)
        self.tasks.clear()
        self._starved.clear()
        for itt in list(self._write_buffers):
            self._drop_staged(itt)
        # The transport may still hold references to these: never lend them again.
        for leases in self._sending + self._in_transport:
            leases.release(reuse=False)
        self._sending.clear()
        self._in_transport.clear()
        holds, self._holds = self._holds, deque()
        for _, hold in holds:
            hold.release()  # their bytes will never be read now
        return running

    def _protocol_error(self, err: IscsiProtocolError) -> None:
        if err.bhs and self.phase is Phase.FULL_FEATURE:
            self._reject(err.bhs, err.reason)
        if err.fatal or self.phase is not Phase.FULL_FEATURE:
            self._close(str(err))

    # -- inbound dispatch ----------------------------------------------------------------
    def _dispatch(self, pdu: Pdu) -> None:
        if self.phase is Phase.LOGIN:
            self._login(pdu)
            return
        handler = HANDLERS.get(pdu.opcode)
        if handler is None:
            raise IscsiProtocolError(
                f"opcode {pdu.opcode:#x} not valid here",
                RejectReason.COMMAND_NOT_SUPPORTED
                if pdu.opcode not in P.INITIATOR_OPCODES
                else RejectReason.PROTOCOL_ERROR,
                bhs=pdu.bhs,
            )
        handler(self, pdu)

    def _login(self, pdu: Pdu) -> None:
        if pdu.opcode != Op.LOGIN_REQUEST:
            # RFC 7143 6.2: anything but a Login Request before login completes is fatal.
            self._close(f"opcode {pdu.opcode:#x} during login")
            return
        step = self.login.receive(pdu)
        for reply in step.replies:
            self._output.append(reply)
        if step.close:
            redirected = step.redirected
            if redirected is None:
                self._close(f"login refused: {step.refusal}" if step.refusal else "login refused")
            else:
                self._close(f"redirected to {redirected}")
            return
        if step.done is not None:
            self._enter_full_feature(step.done)

    def _enter_full_feature(self, done: LoginDone) -> None:
        params = done.params
        session = self.sessions.get(done.tsih)
        if session is None:
            self._close("session vanished during login")
            return
        session.params = params
        session.target = done.target
        if not session.connections:
            session.exp_cmdsn = done.exp_cmdsn
        session.connections.append(self)
        self.session = session
        self.cid = done.cid
        self.stat_sn = done.stat_sn
        self.header_digest = params.header_digest
        self.data_digest = params.data_digest
        self.receiver.header_digest = params.header_digest
        self.receiver.data_digest = params.data_digest
        self.receiver.max_data_length = params.target_max_recv_data_segment_length
        self.max_send_data = params.initiator_max_recv_data_segment_length
        self.max_burst = params.max_burst_length
        self.first_burst = params.first_burst_length
        self.immediate_data = params.immediate_data
        self.initial_r2t = params.initial_r2t
        self.max_outstanding_r2t = params.max_outstanding_r2t
        self.text = TextMachine(self.settings, self.portal, params, done.target)
        if done.target is not None:
            self.nexus = Nexus(
                initiator_port=session.initiator_port,
                target_port=f"{done.target.name},t,0x{self.portal.tpgt:04x}",
                relative_target_port=self.portal.tpgt,
                initiator_name=session.initiator_name,
            )
        self.phase = Phase.FULL_FEATURE
        self._events.append(SessionStarted(session))
