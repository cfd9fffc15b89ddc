"""One iSCSI connection as a sans-I/O state machine: PDUs in, PDUs and events out.

The driver (``targetd.server``) feeds received bytes through :attr:`Connection.receiver`,
then drains :meth:`take_output` (buffers to write, in order) and :meth:`take_events`
(SCSI commands to run, tasks to abort, a close). When a SCSI command finishes it calls
:meth:`scsi_done`. Time comes in through :meth:`tick`, so keepalives test without sleeping.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING

import crc32c

from scsi.buffers import POOL_MIN_SIZE, BufferPool, Leases, MemoryBudget
from scsi.command import (
    DataHold,
    FileRange,
    Nexus,
    ScsiCommand,
    ScsiResult,
    Status,
    TaskAttribute,
)
from scsi.sense import Reason, build_sense
from scsi.target import decode_lun
from targetd.iscsi import datapath
from targetd.iscsi import pdu as P
from targetd.iscsi.datapath import Burst
from targetd.iscsi.events import (
    AbortTasks,
    CloseConnection,
    Event,
    ExecuteCommand,
    ResetRequested,
    SessionStarted,
    TaskHandle,
    TmfFunction,
    TmfResponse,
)
from targetd.iscsi.login import LoginMachine
from targetd.iscsi.pdu import Op, Pdu, RejectReason, put_u32
from targetd.iscsi.receiver import IscsiProtocolError, PduReceiver
from targetd.iscsi.text import TextMachine

if TYPE_CHECKING:
    from targetd.iscsi.login import LoginDone
    from targetd.iscsi.session import Session, SessionTable
    from targetd.iscsi.settings import PortalSettings, Settings

__all__ = [
    "AbortTasks",
    "CloseConnection",
    "Connection",
    "Event",
    "ExecuteCommand",
    "Phase",
    "ResetRequested",
    "SessionStarted",
    "TaskHandle",
]

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


# Task attributes 5-7 are reserved: served as SIMPLE. A table, not an Enum call per command.
_ATTRIBUTES = tuple(TaskAttribute(a) if a <= 4 else TaskAttribute.SIMPLE for a in range(8))
_SEQUENCE_NUMBERS = struct.Struct(">III")
# A SCSI Command's header fields, in one unpack: opcode byte, flags, LUN, ITT, expected
# data transfer length, CmdSN.
_SCSI_COMMAND = struct.Struct(">BB6x8sIII").unpack_from
# What placing a SCSI Command's immediate data needs: flags, data segment length (high byte,
# low 16 bits), ITT, expected data transfer length.
_PLACEMENT_FIELDS = struct.Struct(">xB3xBH8xII").unpack_from
_BAD_FIELD = RejectReason.INVALID_PDU_FIELD
_RESETS = (
    TmfFunction.LOGICAL_UNIT_RESET,
    TmfFunction.TARGET_WARM_RESET,
    TmfFunction.TARGET_COLD_RESET,
)


class Connection:
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
        if self.tasks.get(task.itt) is not task or task.aborted:
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

    def _acknowledged(self, exp_stat_sn: int) -> None:
        """The initiator has every status below ``exp_stat_sn`` (so every byte before them):
        the READs sent from a file that those end are complete. A value further past what
        was sent than one (an initiator that counts a ping's StatSN, which the ping does not
        consume) is not believed."""
        if not P.serial_le(exp_stat_sn, (self.stat_sn + 1) & 0xFFFFFFFF):
            return
        holds = self._holds
        while holds and P.serial_lt(holds[0][0], exp_stat_sn):
            holds.popleft()[1].release()

    def _ping_for_holds(self) -> None:
        """A task waits for our READs sent from a file: ask the initiator for its ExpStatSN
        now (a NOP-In ping, after their statuses), instead of whenever it next sends
        something. One ping covers every status sent before it."""
        if self.phase is not Phase.FULL_FEATURE or not self._holds:
            return
        if self._pinged_at_sn == self.stat_sn:
            return  # already pinged after the last of them
        self._pinged_at_sn = self.stat_sn
        self._ping_ttt = self._new_ttt()
        hdr = P.new_header(Op.NOP_IN, 0x80, lun=bytes(8))
        put_u32(hdr, 20, self._ping_ttt)
        # Not armed as a keepalive (``_ping_sent_at``): an initiator slow to read the data
        # before the ping is alive; it must not be dropped for that.
        self._send(hdr, advance_statsn=False)
        self.wake()

    def aborts_finished(self, token: int) -> None:
        pending = self._pending_tmf.pop(token, None)
        if pending is not None:
            self._tmf_response(pending[0], pending[1])

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

    def abort_matching(self, lun: int | None) -> list[TaskHandle]:
        """Abort this connection's commands for ``lun`` (None: all) without responses."""
        victims = [t for t in self.tasks.values() if lun is None or t.lun == lun]
        for t in victims:
            self._forget(t)
        return [t for t in victims if t.started]

    # -- output helpers ----------------------------------------------------------------
    def _send(
        self,
        hdr: bytearray,
        data: Output = b"",
        *,
        advance_statsn: bool = True,
        stamp_statsn: bool = True,
    ) -> None:
        session = self.session
        if stamp_statsn:
            stat_sn = self.stat_sn
            if advance_statsn:
                self.stat_sn = (stat_sn + 1) & 0xFFFFFFFF
            if session is not None:  # StatSN, ExpCmdSN, MaxCmdSN: one pack, not three
                _SEQUENCE_NUMBERS.pack_into(
                    hdr, 24, stat_sn, session.exp_cmdsn & 0xFFFFFFFF, session.max_cmdsn & 0xFFFFFFFF
                )
                self._emit(hdr, data)
                return
            put_u32(hdr, 24, stat_sn)
        if session is not None:
            put_u32(hdr, 28, session.exp_cmdsn)
            put_u32(hdr, 32, session.max_cmdsn)
        self._emit(hdr, data)

    def _emit(self, hdr: bytearray, data: Output = b"") -> None:
        out = self._output
        out.append(hdr)
        if self.header_digest:
            out.append(crc32c.crc32c(hdr).to_bytes(4, "little"))
        n = len(data)
        if n:
            out.append(data)
            pad = -n & 3
            if pad:
                out.append(bytes(pad))
            if self.data_digest:
                assert not isinstance(data, FileRange)  # never asked for (_maybe_start)
                crc = crc32c.crc32c(data)
                if pad:
                    crc = crc32c.crc32c(bytes(pad), crc)
                out.append(crc.to_bytes(4, "little"))

    def _new_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = (self._next_ttt + 1) & 0x7FFFFFFF or 1
        return ttt

    def _close(self, reason: str) -> None:
        if self.phase is not Phase.CLOSED:
            self.phase = Phase.CLOSED
            self._events.append(CloseConnection(reason))

    def _reject(self, bhs: bytes, reason: RejectReason) -> None:
        hdr = P.new_header(Op.REJECT, 0x80, data_length=P.BHS_LEN)
        hdr[2] = reason
        put_u32(hdr, 16, P.RESERVED_TAG)
        self._send(hdr, bhs[: P.BHS_LEN].ljust(P.BHS_LEN, b"\0"))

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
        handler = _HANDLERS.get(pdu.opcode)
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
            self._close("login refused" if redirected is None else f"redirected to {redirected}")
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

    # -- NOP -------------------------------------------------------------------------
    def _on_nop_out(self, pdu: Pdu) -> None:
        if pdu.itt == P.RESERVED_TAG:
            if not pdu.immediate:
                raise IscsiProtocolError("NOP-Out without ITT must be immediate", bhs=pdu.bhs)
            return  # the answer to our ping; last_heard already updated
        if pdu.ttt != P.RESERVED_TAG:
            raise IscsiProtocolError("NOP-Out with both ITT and TTT", bhs=pdu.bhs)

        def answer() -> None:
            data = bytes(pdu.data[: self.max_send_data])
            hdr = P.new_header(Op.NOP_IN, 0x80, itt=pdu.itt, lun=pdu.lun, data_length=len(data))
            put_u32(hdr, 20, P.RESERVED_TAG)
            self._send(hdr, data)

        self._sequence(pdu, answer)

    # -- SCSI command ------------------------------------------------------------
    def _placement(self, bhs: bytes) -> memoryview | None:
        """Where the data segment of the PDU with header ``bhs`` should land."""
        op = bhs[0] & 0x3F
        if op == Op.SCSI_COMMAND:
            flags, dlen_high, dlen_low, itt, edtl = _PLACEMENT_FIELDS(bhs)
            dlen = dlen_high << 16 | dlen_low
            if not flags & P.FLAG_WRITE or dlen > edtl or edtl > self._max_command:
                return None
            if itt in self._write_buffers:
                self._drop_staged(itt)
            if edtl < POOL_MIN_SIZE:  # small: not counted (the hot path of 4 KiB writes)
                buf = bytearray(edtl)
                self._write_buffers[itt] = (buf, None)
                return memoryview(buf)[:dlen]
            staged = self._write_buffer(edtl)
            if staged is None:
                return None  # no room: the immediate data is copied, the rest waits
            self._write_buffers[itt] = staged
            return memoryview(staged[0])[:dlen]
        if op == Op.DATA_OUT:
            dlen = P.data_segment_length(bhs)
            # Only a Data-Out that continues its burst exactly may land in the command's
            # buffer: a stray one must be refused without having overwritten data already
            # received. (A command still in this same batch of PDUs is not known yet: its
            # Data-Out takes the copying path and is checked in _on_data_out.)
            task = self.tasks.get(int.from_bytes(bhs[16:20], "big"))
            if task is None or task.buffer is None:
                return None
            burst = task.bursts.get(int.from_bytes(bhs[20:24], "big"))
            offset = int.from_bytes(bhs[40:44], "big")
            if burst is None or not burst.takes(offset, dlen):
                return None
            return memoryview(task.buffer)[offset : offset + dlen]
        return None

    def _on_scsi_command(self, pdu: Pdu) -> None:
        if self.is_discovery:
            self._drop_staged(pdu.itt)
            raise IscsiProtocolError("SCSI command in a discovery session", bhs=pdu.bhs)
        bhs = pdu.bhs
        op, flags, lun_raw, itt, edtl, cmdsn = _SCSI_COMMAND(bhs)
        write = bool(flags & P.FLAG_WRITE)
        read = bool(flags & P.FLAG_READ)
        dlen = len(pdu.data)
        if dlen and (
            not write or dlen > edtl or not self.immediate_data or dlen > self.first_burst
        ):
            self._drop_staged(itt)
            raise IscsiProtocolError("bad immediate data", bhs=bhs)
        self._failed_itts.pop(itt, None)
        if itt in self.tasks:
            self._drop_staged(itt)
            raise IscsiProtocolError("ITT already in use", RejectReason.TASK_IN_PROGRESS, bhs=bhs)
        cdb = bhs[32:48]
        if pdu.ahs:
            cdb += _extended_cdb(pdu.ahs)
        task = Task(
            itt=itt,
            lun=decode_lun(lun_raw),
            lun_raw=lun_raw,
            cdb=cdb,
            cmdsn=cmdsn,
            edtl=edtl,
            read=read,
            write=write,
            attribute=_ATTRIBUTES[flags & P.ATTR_MASK],
        )
        if write and edtl:
            # The unsolicited part: immediate data plus Data-Out with TTT 0xffffffff.
            if not self.initial_r2t and not flags & P.FLAG_FINAL:
                task.unsolicited_end = min(edtl, self.first_burst)
                task.bursts[P.RESERVED_TAG] = Burst(dlen, task.unsolicited_end)
            else:
                task.unsolicited_end = dlen
            task.next_r2t_offset = task.unsolicited_end
            staged = self._write_buffers.pop(itt, None)
            if staged is None:
                if edtl > self._max_command:
                    self._sequence(pdu, lambda: self._refuse_oversized(task))
                    return
                staged = self._write_buffer(edtl) if not self._starved else None
                if staged is None and task.unsolicited_end:
                    # No room for the whole write yet: the unsolicited part (at most
                    # FirstBurstLength, and the command window bounds how many) is
                    # kept apart until it has; nothing beyond it is solicited before.
                    staged = (bytearray(task.unsolicited_end), None)
            if staged is not None:
                task.buffer, task.leases = staged
                if dlen and not (isinstance(pdu.data, memoryview) and pdu.data.obj is task.buffer):
                    task.buffer[:dlen] = pdu.data
            task.received = dlen
        self.tasks[itt] = task
        immediate = bool(op & 0x40)
        session = self.session
        assert session is not None

        def deliver() -> None:
            task.delivered = True
            if task.aborted:  # failed while it waited for its CmdSN
                return
            if not immediate:
                # The window follows the commands in flight: MaxCmdSN moves on as they end.
                task.windowed = True
                session.in_flight += 1
            if self._starved or not self._admit(task):
                self._starved.append(task)
                return
            if task.write:
                self._solicit(task)
            self._maybe_start(task)

        if not session.sequence(cmdsn, immediate, deliver):
            del self.tasks[itt]
            if task.leases is not None:
                task.leases.release(reuse=False)

    def _forget(self, task: Task) -> None:
        """``task`` ends before all its data came: Data-Out still in flight for it is
        dropped without a Reject (libiscsi drops the whole session on one)."""
        task.aborted = True
        self._end(task)
        self._drop_staged(task.itt)
        if task.leases is not None:
            # A thread may still fill or read it, or the receiver fill it: not lent again.
            task.leases.release(reuse=False)
        if task.write and task.received < task.edtl:
            if len(self._failed_itts) >= 1024:
                del self._failed_itts[next(iter(self._failed_itts))]
            self._failed_itts[task.itt] = None

    def _write_buffer(self, size: int) -> tuple[bytearray, Leases | None] | None:
        """A write buffer of ``size`` bytes if the account has room, else None."""
        if size < POOL_MIN_SIZE:
            # Small writes are not counted: the command window bounds them.
            return bytearray(size), None
        if not self.account.fits(size):
            return None
        leases = Leases(self.pool, self.account)
        return leases.take(size), leases

    def _admit(self, task: Task) -> bool:
        """Give ``task`` the memory it needs to go on, or False if the account has none."""
        if task.write:
            buffer = task.buffer
            if (buffer is not None and len(buffer) == task.edtl) or not task.edtl:
                return True
            staged = self._write_buffer(task.edtl)
            if staged is None:
                return False
            buf, leases = staged
            if task.buffer is not None:  # the unsolicited part received so far
                buf[: len(task.buffer)] = task.buffer
            task.buffer, task.leases = buf, leases
            return True
        if task.read and task.edtl >= POOL_MIN_SIZE:
            need = min(task.edtl, self._max_command)
            if not self.account.fits(need):
                return False
            task.leases = Leases(self.pool, self.account, need)
        return True

    def _proceed(self, task: Task) -> None:
        if task.write:
            self._solicit(task)
        self._maybe_start(task)

    def _on_room(self) -> None:
        self._room = True
        self.wake()

    def _retry(self) -> None:
        """Commands waiting for memory go on, in order, while there is room."""
        starved = self._starved
        while starved:
            task = starved[0]
            if task.aborted or self.tasks.get(task.itt) is not task:
                starved.popleft()
                continue
            if not self._admit(task):
                return
            starved.popleft()
            self._proceed(task)

    def _end(self, task: Task) -> None:
        """``task`` leaves the connection's books: its CmdSN slot opens again."""
        self.tasks.pop(task.itt, None)
        if task.windowed:
            task.windowed = False
            if self.session is not None:
                self.session.in_flight -= 1

    def _fail_task(self, task: Task, reason: Reason) -> None:
        """End a command that has not started with CHECK CONDITION; drop its data."""
        self._forget(task)
        self._respond(task, ScsiResult(Status.CHECK_CONDITION, sense=build_sense(reason)))

    def _refuse_oversized(self, task: Task) -> None:
        self._end(task)
        self._respond(
            task,
            ScsiResult(Status.CHECK_CONDITION, sense=build_sense(Reason.INVALID_FIELD_IN_CDB)),
        )

    def _solicit(self, task: Task) -> None:
        """Send R2Ts for the solicited part, up to MaxOutstandingR2T at a time."""
        if task.buffer is None or len(task.buffer) < task.edtl:
            return  # waits in _starved for its buffer
        while (
            task.next_r2t_offset < task.edtl
            and sum(1 for t in task.bursts if t != P.RESERVED_TAG) < self.max_outstanding_r2t
        ):
            offset = task.next_r2t_offset
            length = min(self.max_burst, task.edtl - offset)
            ttt = self._new_ttt()
            task.bursts[ttt] = Burst(offset, offset + length)
            task.next_r2t_offset = offset + length
            hdr = P.new_header(Op.R2T, 0x80, itt=task.itt, lun=task.lun_raw)
            put_u32(hdr, 20, ttt)
            put_u32(hdr, 36, task.r2tsn)
            put_u32(hdr, 40, offset)
            put_u32(hdr, 44, length)
            task.r2tsn += 1
            self._send(hdr, advance_statsn=False)

    def _on_data_out(self, pdu: Pdu) -> None:
        task = self.tasks.get(pdu.itt)
        if task is None and pdu.itt in self._failed_itts:
            return  # the rest of a command already ended with CHECK CONDITION
        if task is None or not task.write or task.buffer is None:
            raise IscsiProtocolError("Data-Out for no write command", _BAD_FIELD, bhs=pdu.bhs)
        ttt = pdu.ttt
        offset = pdu.u32(40)
        burst = task.bursts.get(ttt)
        dlen = len(pdu.data)
        if burst is None or not burst.takes(offset, dlen):
            raise IscsiProtocolError("Data-Out outside its burst", _BAD_FIELD, bhs=pdu.bhs)
        if pdu.u32(36) != burst.datasn:
            # A Data-Out sequence error: with ErrorRecoveryLevel 0 there is no recovering the
            # data, but the connection and the other commands on it need not die with it
            # (as dropping the connection would make them). The command ends with ABORTED
            # COMMAND / DATA PHASE ERROR and the initiator retries; its Data-Out still in
            # flight is discarded quietly (a Reject makes libiscsi drop the session).
            self._fail_task(task, Reason.DATA_PHASE_ERROR)
            return
        burst.datasn += 1
        if not isinstance(pdu.data, memoryview) or pdu.data.obj is not task.buffer:
            task.buffer[offset : offset + dlen] = pdu.data
        burst.offset += dlen
        task.received += dlen
        if burst.done or pdu.final:
            del task.bursts[ttt]
            if ttt != P.RESERVED_TAG and not burst.done:
                raise IscsiProtocolError(
                    "short Data-Out burst", RejectReason.PROTOCOL_ERROR, bhs=pdu.bhs
                )
            if task.delivered:
                self._solicit(task)
        self._maybe_start(task)

    def _maybe_start(self, task: Task) -> None:
        if task.started or not task.delivered:
            return
        # A write starts with all its data in (so in a buffer of its full length).
        if task.write and task.received < task.edtl:
            return
        task.started = True
        data_out = memoryview(task.buffer) if task.buffer is not None else None
        cmd = ScsiCommand(
            cdb=task.cdb,
            lun=task.lun,
            nexus=self.nexus,  # type: ignore[arg-type]
            data_out=data_out,
            data_in_length=task.edtl if task.read else 0,
            attribute=task.attribute,
            tag=task.itt,
            buffers=task.leases,
            file_data_in=task.read and self.sends_files and not self.data_digest,
        )
        self._events.append(ExecuteCommand(task, cmd))

    def _respond(self, task: Task, result: ScsiResult) -> None:
        """Data-In (with status collapsed into the last one when it can) and status."""
        data = result.data
        if (
            task.write
            and not task.read
            and data is None
            and result.status == Status.GOOD
            and result.sense is None
            and result.data_out_used in (None, task.edtl)
        ):
            # The common write: all its data used, nothing to report in residuals.
            self._send(_good_response(task.itt))
            return
        if data is not None and task.read and not task.write and len(data) == task.edtl:
            flags = residual = 0  # the common read: what was expected, no residual
            n = task.edtl
        else:
            flags, residual, n = datapath.residual(
                task.read,
                task.write,
                task.edtl,
                None if data is None else len(data),
                result.data_out_used,
                result.status == Status.GOOD,
            )
        collapse = result.status == Status.GOOD and result.sense is None
        if n:
            view: memoryview | FileRange
            if type(data) is FileRange:
                self.file_output = True
                view = data[:n]
            else:
                view = memoryview(data)[:n]  # type: ignore[arg-type]
            if n <= self.max_send_data and n <= self.max_burst:
                if collapse:
                    flags |= 0x80 | P.DATAIN_STATUS
                    hdr = datapath.single_data_in(
                        n,
                        lun=task.lun_raw,
                        itt=task.itt,
                        flags=flags,
                        status=result.status,
                        residual=residual,
                    )
                    self._send(hdr, view)
                    return
                hdr = datapath.single_data_in(n, lun=task.lun_raw, itt=task.itt)
                self._send(hdr, view, stamp_statsn=False)
            else:
                pdus = datapath.data_in_pdus(
                    view,
                    lun=task.lun_raw,
                    itt=task.itt,
                    max_segment=self.max_send_data,
                    max_burst=self.max_burst,
                )
                for hdr, segment, last in pdus:
                    if last and collapse:
                        hdr[1] |= P.DATAIN_STATUS | flags
                        hdr[3] = result.status
                        put_u32(hdr, 44, residual)
                        self._send(hdr, segment)
                        return
                    self._send(hdr, segment, stamp_statsn=False)
        hdr = P.new_header(Op.SCSI_RESPONSE, 0x80 | flags, itt=task.itt)
        hdr[3] = result.status
        put_u32(hdr, 44, residual)
        payload = b""
        if result.sense:
            payload = len(result.sense).to_bytes(2, "big") + result.sense
            P.set_data_length(hdr, len(payload))
        self._send(hdr, payload)

    # -- task management -------------------------------------------------------------
    def _on_task_mgmt(self, pdu: Pdu) -> None:
        def deliver() -> None:
            self._task_mgmt(pdu)

        self._sequence(pdu, deliver)

    def _task_mgmt(self, pdu: Pdu) -> None:
        function = pdu.flags & 0x7F
        lun = decode_lun(pdu.lun)
        token = self._next_token
        self._next_token += 1
        if function == TmfFunction.ABORT_TASK:
            rtt = pdu.u32(20)
            task = self.tasks.get(rtt)
            if task is None or task.lun != lun:
                # RFC 7143 11.5.1: a command that has not arrived yet is aborted ("Function
                # complete"); one already answered (its CmdSN below ExpCmdSN, outside the
                # window) or unknown: "Task does not exist".
                found = pdu.u32(32) == pdu.cmdsn
                self._tmf_response(pdu, TmfResponse.COMPLETE if found else TmfResponse.NO_TASK)
                return
            victims = self._abort_task(task)
            self._pending_tmf[token] = (pdu, TmfResponse.COMPLETE)
            self._events.append(AbortTasks(tuple(victims), token))
        elif function in (TmfFunction.ABORT_TASK_SET, TmfFunction.CLEAR_TASK_SET):
            victims = [
                t
                for t in self.tasks.values()
                if t.lun == lun and t.itt != pdu.itt and _older(t.cmdsn, pdu.cmdsn)
            ]
            for t in victims:
                self._forget(t)
            self._pending_tmf[token] = (pdu, TmfResponse.COMPLETE)
            self._events.append(AbortTasks(tuple(t for t in victims if t.started), token))
        elif function in _RESETS:
            if self.is_discovery:
                self._tmf_response(pdu, TmfResponse.REJECTED)
                return
            target_lun = lun if function == TmfFunction.LOGICAL_UNIT_RESET else None
            self._pending_tmf[token] = (pdu, TmfResponse.COMPLETE)
            cold = function == TmfFunction.TARGET_COLD_RESET
            self._events.append(ResetRequested(target_lun, self.nexus, token, cold))  # type: ignore[arg-type]
        else:
            self._tmf_response(pdu, TmfResponse.NOT_SUPPORTED)

    def _abort_task(self, task: Task) -> list[Task]:
        self._forget(task)
        return [task] if task.started else []

    def _tmf_response(self, pdu: Pdu, response: int) -> None:
        hdr = P.new_header(Op.TASK_MGMT_RESPONSE, 0x80, itt=pdu.itt)
        hdr[2] = response
        self._send(hdr)
        self._maybe_finish_logout()

    # -- text and logout ---------------------------------------------------------------
    def _on_text(self, pdu: Pdu) -> None:
        assert self.text is not None

        def deliver() -> None:
            assert self.text is not None
            for hdr, data in self.text.receive(pdu):
                self._send(hdr, data)
            # A Text exchange may re-declare MaxRecvDataSegmentLength (RFC 7143 13.12).
            if self.session is not None and self.session.params is not None:
                self.max_send_data = self.session.params.initiator_max_recv_data_segment_length

        self._sequence(pdu, deliver)

    def _on_logout(self, pdu: Pdu) -> None:
        def deliver() -> None:
            self._pending_logout = pdu
            self._maybe_finish_logout()

        self._sequence(pdu, deliver)

    def _maybe_finish_logout(self) -> None:
        pdu = self._pending_logout
        if pdu is None or self.tasks:
            return
        self._pending_logout = None
        reason = pdu.flags & 0x7F
        hdr = P.new_header(Op.LOGOUT_RESPONSE, 0x80, itt=pdu.itt)
        if reason == 2:  # remove the connection for recovery: ERL 0 has none
            hdr[2] = 2
        else:
            hdr[2] = 0
        P.put_u16(hdr, 40, 0)  # Time2Wait
        P.put_u16(hdr, 42, 0)  # Time2Retain
        self._send(hdr)
        self.phase = Phase.LOGGED_OUT
        self._events.append(CloseConnection("logout"))

    def _on_snack(self, pdu: Pdu) -> None:
        # ErrorRecoveryLevel 0: SNACK is not supported (RFC 7143 11.16).
        raise IscsiProtocolError(
            "SNACK at ErrorRecoveryLevel 0", RejectReason.COMMAND_NOT_SUPPORTED, bhs=pdu.bhs
        )

    def _on_login_in_ffp(self, pdu: Pdu) -> None:
        raise IscsiProtocolError("Login Request in full-feature phase", bhs=pdu.bhs)


# The handler of each opcode in full-feature phase. Built after the class, not in its body, so
# that mypyc (docs/performance.md, "Compiled hot path") sees plain functions.
_HANDLERS: dict[int, Callable[[Connection, Pdu], None]] = {
    Op.NOP_OUT: Connection._on_nop_out,
    Op.SCSI_COMMAND: Connection._on_scsi_command,
    Op.TASK_MGMT_REQUEST: Connection._on_task_mgmt,
    Op.TEXT_REQUEST: Connection._on_text,
    Op.DATA_OUT: Connection._on_data_out,
    Op.LOGOUT_REQUEST: Connection._on_logout,
    Op.SNACK_REQUEST: Connection._on_snack,
    Op.LOGIN_REQUEST: Connection._on_login_in_ffp,
}


_GOOD_RESPONSE = struct.Struct(">BB14xI").pack_into


def _good_response(itt: int) -> bytearray:
    """A SCSI Response with GOOD status, no residual and no data: what
    ``P.new_header(Op.SCSI_RESPONSE, 0x80, itt=itt)`` builds, in one pack."""
    hdr = bytearray(P.BHS_LEN)
    _GOOD_RESPONSE(hdr, 0, Op.SCSI_RESPONSE, 0x80, itt)
    return hdr


def _older(cmdsn: int, than: int) -> bool:
    return P.serial_lt(cmdsn, than)


def _extended_cdb(ahs: bytes) -> bytes:
    """CDB bytes beyond 16 from an Extended CDB AHS (type 1), RFC 7143 11.3.1.2."""
    pos = 0
    while pos + 4 <= len(ahs):
        length = int.from_bytes(ahs[pos : pos + 2], "big")
        if ahs[pos + 2] == 1:
            return bytes(ahs[pos + 4 : pos + 3 + length])
        pos += 3 + length + (-(3 + length) % 4)
    return b""
