"""The asyncio shell around the sans-I/O connection: sockets in, SCSI execution, bytes out.

Received bytes land where :class:`PduReceiver` says (a ``BufferedProtocol``: no copies
for large Data-Out); each SCSI command runs eagerly (``targetd.eager``) and becomes an
asyncio task only if it has to wait, so that task management can cancel it; the replies of
a batch are written with one ``writelines``. Reading pauses while the socket's write
buffer is above its high-water mark.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import resource
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from backing.malloc_threshold import fix_mmap_threshold
from scsi.buffers import BufferPool, MemoryBudget
from scsi.command import Nexus, ScsiResult, Status
from scsi.logical_unit import LogicalUnit
from scsi.sense import Reason, build_sense
from scsi.target import ScsiTarget
from targetd import eager, fast_read, fast_write, iscsi_settings
from targetd.config import Config, Portal
from targetd.iscsi.connection import (
    AbortTasks,
    CloseConnection,
    Connection,
    ExecuteCommand,
    Phase,
    ResetRequested,
    SessionStarted,
    TaskHandle,
)
from targetd.iscsi.session import Session, SessionTable
from targetd.logs import fields
from targetd.metrics import LunStats
from targetd.shell_limits import WRITE_BUFFER_HIGH
from targetd.socket_output import SocketOutput

log = logging.getLogger("targetd")
_clock = time.perf_counter_ns

TICK_SECONDS = 1.0
# At shutdown: the time initiators are given to log out, and how long we wait for them.
LOGOUT_WITHIN = 2
LOGOUT_WAIT = 2.0
# A connection we close is reset if it has not ended this long after: its output still
# unsent (an initiator that does not read), or, while READs sent from a file are
# unacknowledged, the initiator not closing its end (docs/pairs.md, "A connection the
# target closes"). TARGETD_CLOSE_WAIT (seconds) changes it, for tests.
CLOSE_WAIT = float(os.environ.get("TARGETD_CLOSE_WAIT", "30"))
NO_LUNS = ScsiTarget({})  # what a session whose access was revoked sees


@dataclass
class TargetRuntime:
    """A configured target and the SCSI device that serves its LUNs."""

    name: str
    scsi: ScsiTarget
    connections: set[IscsiConnection] = field(default_factory=set)
    # Per-LUN counters, filled in by the shell as commands complete (see targetd.metrics).
    stats: dict[int, LunStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for lun, lu in self.scsi.luns.items():
            self.stats.setdefault(lun, LunStats())
            lu.abort_tasks = functools.partial(self.abort_tasks, lun)

    async def abort_tasks(self, lun: int, nexuses: frozenset[Nexus]) -> None:
        """PREEMPT AND ABORT: the commands these I_T nexuses have on ``lun`` end without a
        response (as ABORT TASK SET would end them); returns once they have stopped."""
        handles = [h for c in list(self.connections) if c.conn.nexus in nexuses
                   for h in c.abort_lun(lun)]  # fmt: skip
        if handles:
            await asyncio.gather(*handles, return_exceptions=True)

    def add_lun(self, number: int, lu: LogicalUnit) -> None:
        """A LUN added while sessions run (SIGHUP): it learns their nexuses, and they get
        REPORTED LUNS DATA HAS CHANGED from the LUNs they already see."""
        for other in self.scsi.luns.values():
            other.raise_unit_attention(Reason.REPORTED_LUNS_DATA_CHANGED)
        lu.report_luns = self.scsi.lun_numbers
        lu.abort_tasks = functools.partial(self.abort_tasks, number)
        self.scsi.luns[number] = lu
        # EXTENDED COPY: the new LU sees the target's LUN map (it was built with the
        # target's copy services), and the target's copy manager reaches it through it.
        lu.lun_map = self.scsi.luns
        self.stats[number] = LunStats()
        for c in self.connections:
            if c.conn.nexus is not None:
                lu.nexus_established(c.conn.nexus)

    def remove_lun(self, number: int) -> LogicalUnit:
        """A LUN removed while sessions run (SIGHUP): it leaves the target, its counters
        and what each connection's fast READ keeps of it (a removed LU, its file and its
        volume must not live on as long as a connection that once read it)."""
        lu = self.scsi.luns.pop(number)
        self.stats.pop(number, None)
        for c in self.connections:
            c.forget(lu)
        return lu


class IscsiConnection(asyncio.BufferedProtocol):
    def __init__(self, server: TargetServer, portal: Portal) -> None:
        self.server = server
        self.portal = portal
        self.conn = Connection(
            server.iscsi,
            iscsi_settings.portal_settings(portal, server.moved.get(portal, ())),
            server.sessions,
            time.monotonic(),
            pool=server.pool,
            budget=server.budget,
        )
        self.conn.wake = self._schedule_flush
        self.transport: asyncio.Transport | None = None
        # Writes the output: bytes through the transport, large READs' file ranges with
        # sendfile (targetd.socket_output).
        self._output = SocketOutput()
        self.peer = "?"
        self.host = "?"
        self.runtime: TargetRuntime | None = None
        # Why this session lost its access (a reload), if it did: see revoke().
        self.revoked: str | None = None
        self._running: dict[TaskHandle, asyncio.Task[None]] = {}
        self._closing = False
        self._flush_scheduled = False
        # True while _pump handles events: whatever they produce is written by that same
        # _pump, so no flush needs scheduling (one loop callback per command saved).
        self._pumping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._close_requested = False
        # Reading paused because our replies pile up unsent (see _pump).
        self._backpressure = False
        self._waiters: set[asyncio.Future[None]] = set()
        # Our end is shut for writing, the socket kept until the initiator closes its end.
        self._half_closed = False
        # A small plain READ served in one call (targetd.fast_read), and what it knows of
        # each LU it has seen.
        self._fast = fast_read.SERVE
        self._fast_plans: dict[LogicalUnit, fast_read.Plan] = {}
        # Runs of small plain WRITEs served as they are parsed (targetd.fast_write).
        self._fast_write = fast_write.SERVE
        self._fast_write_plans: dict[LogicalUnit, fast_write.Plan] = {}

    # -- asyncio protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        # Kept: CPython 3.11's get_running_loop() makes a getpid() system call each time.
        self._loop = asyncio.get_running_loop()
        # Marks of 0: resume_writing tells us each time the write buffer is empty, which
        # is when the buffers of the replies in it can be lent again. Pushing back on the
        # client (pause_reading) is done by _pump, at WRITE_BUFFER_HIGH.
        transport.set_write_buffer_limits(high=0, low=0)
        self.conn.sends_files = self._output.attach(transport, self._loop, self._output_progress)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if local:
            self.conn.login.local_host = local[0]
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.conn.now = time.monotonic()
        self.conn.last_heard = self.conn.now
        self.host = peer[0] if peer else "?"
        self.server.admit(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.receiver.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        fast = self._fast
        if fast is not None and fast(self, nbytes):
            return
        fast_write = self._fast_write
        if fast_write is not None:
            nbytes = fast_write(self, nbytes)  # what it did not serve, or -1
            if nbytes < 0:
                return
        self.conn.now = self.server.now
        self.conn.data_received(nbytes)
        self._pump()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._output.close()
        self.server.connections.discard(self)
        self.server.logging_in.pop(self, None)
        session = self.conn.session
        for task in self.conn.closed():
            handle = self._running.pop(task, None)
            if handle is not None:
                handle.cancel()
        if self.runtime is not None:
            self.runtime.connections.discard(self)
        if session is not None:
            if self.conn in session.connections:
                session.connections.remove(self.conn)
            if not session.connections and not session.closed:
                self.server.end_session(session)
                if self.runtime is not None and self.conn.nexus is not None:
                    self.runtime.scsi.nexus_lost(self.conn.nexus)
        log.info("connection closed", extra=self.context(error=str(exc) if exc else None))

    def context(self, **more: object) -> dict[str, dict[str, object]]:
        """Log fields naming this connection's session."""
        session = self.conn.session
        if session is None:
            return fields(peer=self.peer, **more)
        return fields(
            peer=self.peer,
            initiator=session.initiator_name,
            isid=session.isid.hex(),
            tsih=session.tsih,
            cid=self.conn.cid,
            **more,
        )

    def pause_writing(self) -> None:
        pass  # the write buffer is not empty; _pump decides whether to push back

    def resume_writing(self) -> None:
        output = self._output
        if output.queued:  # the transport's buffer is empty: a file range may go now
            output.drive()
            transport = self.transport
            if output.queued or (transport is not None and transport.get_write_buffer_size()):
                return
        self._drained()

    def _output_progress(self) -> None:
        """What waited behind a file range has been written (while the socket was watched)."""
        transport = self.transport
        if transport is not None and not transport.get_write_buffer_size():
            self._drained()

    def _drained(self) -> None:
        self.conn.output_sent()  # every byte written: the buffers come back
        transport = self.transport
        if self._backpressure and transport is not None and not self._closing:
            self._backpressure = False
            transport.resume_reading()
        self._schedule_flush()

    # -- driving the state machine -------------------------------------------------
    def _pump(self) -> None:
        """Act on the machine's events, then write everything they produced at once.

        Commands run eagerly inside the event loop below, so the replies of a whole batch
        of received PDUs go out in one vectored write; a close waits for that write.
        """
        conn = self.conn
        events = conn.take_events()
        if events:
            outer, self._pumping = self._pumping, True  # a handler may _pump too
            try:
                while events:
                    for event in events:
                        _EVENT_HANDLERS[type(event)](self, event)
                    events = conn.take_events()
            finally:
                self._pumping = outer
        out = conn.take_output()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._half_closed:  # nothing more can be written
            if not conn.holding:  # acknowledged meanwhile
                transport.close()
            return
        output = self._output
        if out:
            if conn.file_output or output.queued:
                conn.file_output = False
                output.write(out)
            else:  # bytes only: no FileRange without file_output
                transport.writelines(out)  # type: ignore[arg-type]
        unsent = transport.get_write_buffer_size() + output.queued
        if not unsent:
            # The socket has every byte: the Data-In buffers can be lent again.
            conn.output_sent()
        elif unsent > WRITE_BUFFER_HIGH and not self._backpressure:
            # The client does not read as fast as it asks: stop reading its commands
            # until it has (resume_writing, once the buffer is empty).
            self._backpressure = True
            transport.pause_reading()
        if self._close_requested and not output.queued:
            if self.conn.holding and transport.can_write_eof():
                self._half_close(transport)
            else:
                transport.close()

    def _half_close(self, transport: asyncio.Transport) -> None:
        """Close while READs sent from a file are unacknowledged: their bytes and statuses
        may still wait in the sockets, referencing the file's pages, and the initiator reads
        them after our close as before it. So the holds (and the pair engine behind them)
        stay until it has closed its end too (eof_received), or acknowledged them, or
        CLOSE_WAIT has passed since the close; meanwhile its PDUs are read for their
        ExpStatSN only."""
        self._half_closed = True
        self.conn.phase = Phase.CLOSED  # no command runs any more, no reply is made
        transport.write_eof()  # a FIN after the bytes queued, as close() would send
        self._backpressure = False
        transport.resume_reading()  # stopped by a shutdown, or our replies piling up

    def _abort_unclosed(self) -> None:
        transport = self.transport
        if transport is None or self not in self.server.connections:
            return  # ended
        log.info("resetting connection", extra=self.context(reason="not ended in time"))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A reset, not a FIN: what our socket still holds (the rest of a READ, its
            # status) is dropped, not sent, so the initiator never takes it for complete.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _on_execute(self, event: ExecuteCommand) -> None:
        runtime = self.runtime
        if runtime is None:
            return
        if self.revoked is not None:  # as if the target had no LUN left
            handle = eager.start(self._execute(NO_LUNS, event, {}), self._loop)
        else:
            handle = eager.start(self._execute(runtime.scsi, event, runtime.stats), self._loop)
        if not isinstance(handle, eager.Done):
            self._running[event.task] = handle

    async def _execute(
        self, scsi: ScsiTarget, event: ExecuteCommand, stats: dict[int, LunStats]
    ) -> None:
        command = event.command
        started = _clock()
        try:
            result = await scsi.execute(command)
        except asyncio.CancelledError:
            self._running.pop(event.task, None)
            raise
        except Exception:
            log.exception(
                "command failed", extra=self.context(lun=command.lun, cdb=command.cdb.hex())
            )
            result = ScsiResult(
                Status.CHECK_CONDITION, sense=build_sense(Reason.INTERNAL_TARGET_FAILURE)
            )
        lun_stats = stats.get(command.lun)
        if lun_stats is not None:
            lun_stats.record(
                command.cdb[0],
                command.data_out,
                result.data,
                _clock() - started,
                result.status,
                result.sense,
            )
        running = self._running
        if running:  # empty while commands complete inside eager.start (nearly always)
            running.pop(event.task, None)
        self.conn.scsi_done(event.task, result)
        if not self._pumping:  # _pump writes what a command completed inside it
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Write once per loop iteration, however many commands completed in it."""
        if not self._flush_scheduled and not self._pumping:
            self._flush_scheduled = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._pump()

    def _on_abort(self, event: AbortTasks) -> None:
        handles = self._cancel(event.tasks)
        self._after(handles, lambda: self.conn.aborts_finished(event.token))

    def _on_reset(self, event: ResetRequested) -> None:
        runtime = self.runtime
        handles: list[asyncio.Task[None]] = []
        if runtime is not None:
            for other in list(runtime.connections):
                handles += other._cancel(other.conn.abort_matching(event.lun))
            for pending in runtime.scsi.reset(event.nexus, event.lun):
                handles.append(asyncio.ensure_future(pending))
        if event.cold and runtime is not None:
            victims = list(runtime.connections)

            def respond_then_drop() -> None:
                self.conn.aborts_finished(event.token)
                self._pump()
                for c in victims:
                    log.info("closing connection", extra=c.context(reason="target cold reset"))
                    c.close()

            self._after(handles, respond_then_drop)
            return
        self._after(handles, lambda: self.conn.aborts_finished(event.token))

    def abort_lun(self, lun: int) -> list[asyncio.Task[None]]:
        """End this connection's commands for ``lun`` without responses; the running ones
        are cancelled (returned, to wait for)."""
        return self._cancel(self.conn.abort_matching(lun))

    def _cancel(self, tasks: Iterable[TaskHandle]) -> list[asyncio.Task[None]]:
        handles = []
        for task in tasks:
            handle = self._running.pop(task, None)
            if handle is not None:
                handle.cancel()
                handles.append(handle)
        return handles

    def _after(self, handles: list[asyncio.Task[None]], then: object) -> None:
        async def wait_then() -> None:
            if handles:
                await asyncio.gather(*handles, return_exceptions=True)
            then()  # type: ignore[operator]
            self._pump()

        if handles:
            waiter = asyncio.ensure_future(wait_then())
            self._waiters.add(waiter)
            waiter.add_done_callback(self._waiters.discard)
        else:
            then()  # type: ignore[operator]
            self._pump()

    def _on_session_started(self, event: SessionStarted) -> None:
        session = event.session
        target = session.target
        log.info(
            "login",
            extra=self.context(
                type=session.session_type.lower(), target=target.name if target else None
            ),
        )
        self.server.logging_in.pop(self, None)
        if target is not None and self.conn.nexus is not None:
            runtime = self.server.targets.get(target.name)
            if runtime is None:  # a portal's target, moved to a worker as we logged in
                log.info(
                    "closing connection",
                    extra=self.context(reason="target moved to a worker during login"),
                )
                self.close()
                return
            self.runtime = runtime
            self.runtime.connections.add(self)
            self.runtime.scsi.nexus_established(self.conn.nexus)

    def _on_close(self, event: CloseConnection) -> None:
        if event.reason not in ("logout",):
            log.info("closing connection", extra=self.context(reason=event.reason))
        self.close()

    def forget(self, lu: LogicalUnit) -> None:
        """``lu`` is gone (a reload removed it): keep nothing of it."""
        self._fast_plans.pop(lu, None)

    def ask_to_log_out(self) -> None:
        """Async Message "target requests logout" (a reload changed what this session
        sees); the session keeps working until the initiator logs out."""
        if self.conn.request_logout(LOGOUT_WITHIN):
            self._pump()

    def revoke(self, reason: str) -> None:
        """The session lost its access (a reload removed its target, or its initiator from
        the target's ACL). From now on every command it sends is answered as for a target
        with no LUN (LOGICAL UNIT NOT SUPPORTED); it is asked to log out, and closed if it
        has not within LOGOUT_WITHIN + LOGOUT_WAIT seconds."""
        if self.revoked is not None:
            return
        self.revoked = reason
        self._fast_plans.clear()  # never served again: the LUs may go with their target
        log.info("access revoked", extra=self.context(reason=reason))
        self.ask_to_log_out()
        asyncio.get_running_loop().call_later(LOGOUT_WITHIN + LOGOUT_WAIT, self._drop_revoked)

    def _drop_revoked(self) -> None:
        if self in self.server.connections:
            log.info("closing connection", extra=self.context(reason="revoked, no logout"))
            self.close()

    def stop_reading(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def close(self) -> None:
        """Close once the output already produced has been written (see ``_pump``)."""
        self._closing = True
        if not self._close_requested:
            self._close_requested = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_later(CLOSE_WAIT, self._abort_unclosed)
        self._schedule_flush()


# What each event of the sans-I/O connection runs. Built after the class, not in its body, so
# that mypyc (docs/performance.md, "Compiled hot path") sees plain functions.
_EVENT_HANDLERS: dict[type, Callable[[IscsiConnection, Any], None]] = {
    ExecuteCommand: IscsiConnection._on_execute,
    AbortTasks: IscsiConnection._on_abort,
    ResetRequested: IscsiConnection._on_reset,
    SessionStarted: IscsiConnection._on_session_started,
    CloseConnection: IscsiConnection._on_close,
}


def raise_fd_limit(connections: int) -> None:
    """Let the daemon hold ``connections`` sockets besides its files: raise the soft
    RLIMIT_NOFILE toward the hard one if it is too low (the hard limit is the operator's)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class TargetServer:
    """Listens on the configured portals and owns the sessions and SCSI targets."""

    def __init__(self, config: Config, targets: dict[str, ScsiTarget]) -> None:
        self.config = config  # the setter also tells the iSCSI core (self.iscsi)
        self.targets = {name: TargetRuntime(name, scsi) for name, scsi in targets.items()}
        self.sessions = SessionTable(config.max_sessions, config.max_connections_per_session)
        self.sessions.on_reinstate = self._reinstate
        self.connections: set[IscsiConnection] = set()
        # Buffers: one pool and one memory budget for the whole daemon (docs/iscsi.md).
        self.pool = BufferPool(config.buffer_pool)
        self.budget = MemoryBudget(
            config.buffers_total,
            config.max_sessions * config.max_connections_per_session,
            config.buffers_per_session,
        )
        # Logged-in sessions are capped by max_sessions; connections still logging in
        # by max_pending_logins, oldest first out (see admit).
        self.logging_in: dict[IscsiConnection, None] = {}
        self._evicted = 0
        self._evicted_logged_at = -10.0
        self._servers: list[asyncio.base_events.Server] = []
        self._ticker: asyncio.Task[None] | None = None
        self.now = time.monotonic()
        self.bound: list[tuple[str, int]] = []
        self.portal_ports: list[int] = []  # the port each portal got, in config order
        # Targets other processes serve (targetd.workers): per portal, (target, port) for
        # the login redirect; empty for a daemon that serves its targets itself.
        self.moved: dict[Portal, tuple[tuple[str, int], ...]] = {}

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """A new configuration (start, reload): the iSCSI core's settings follow it."""
        self._config = config
        self.iscsi = iscsi_settings.build(config)

    def admit(self, c: IscsiConnection) -> None:
        """A new connection. Connections that have not logged in have their own budget:
        beyond it, the oldest one from the address with the most of them is closed, so
        idle sockets can neither lock out logins nor touch a logged-in session."""
        self.connections.add(c)
        self.logging_in[c] = None
        if len(self.logging_in) <= self.config.max_pending_logins:
            return
        busiest = Counter(p.host for p in self.logging_in).most_common(1)[0][0]
        victim = next(p for p in self.logging_in if p.host == busiest)
        del self.logging_in[victim]
        self._evicted += 1
        now = time.monotonic()
        if now - self._evicted_logged_at >= 10.0:  # an attacker must not flood the log
            log.warning(
                "closed %d connections that had not logged in (max_pending_logins %d)",
                self._evicted,
                self.config.max_pending_logins,
                extra=victim.context(),
            )
            self._evicted, self._evicted_logged_at = 0, now
        if victim.transport is not None:
            victim.transport.abort()

    async def start(self) -> None:
        fix_mmap_threshold()
        raise_fd_limit(
            len(self.config.portals)
            + self.config.max_sessions * self.config.max_connections_per_session
            + 2 * self.config.max_pending_logins
        )
        loop = asyncio.get_running_loop()
        for portal in self.config.portals:

            def accept(p: Portal = portal) -> IscsiConnection:
                return IscsiConnection(self, p)

            server = await loop.create_server(
                accept,
                portal.listen_host,
                portal.listen_port,
                reuse_address=True,
                backlog=128,
            )
            self._servers.append(server)
            for sock in server.sockets:
                self.bound.append(sock.getsockname()[:2])
            self.portal_ports.append(server.sockets[0].getsockname()[1])
        self._ticker = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            # How much later than asked this tick runs: time the loop did not run, the
            # host too loaded to schedule it. The connections' timers do not count it.
            stall = now - self.now - TICK_SECONDS
            self.now = now
            for c in list(self.connections):
                if stall > 0:
                    c.conn.stalled(stall, now)
                c.conn.tick(now)
                c._pump()

    def _reinstate(self, old: Session) -> None:
        log.info(
            "reinstating session",
            extra=fields(initiator=old.initiator_name, isid=old.isid.hex(), tsih=old.tsih),
        )
        for c in list(self.connections):
            if c.conn.session is old:
                c.close()

    def end_session(self, session: Session) -> None:
        self.sessions.remove(session)

    def scsi_targets(self) -> dict[str, ScsiTarget]:
        return {name: runtime.scsi for name, runtime in self.targets.items()}

    async def _ask_initiators_to_log_out(self) -> None:
        """Async Message "target requests logout" to every session; wait briefly for them."""
        asked = [c for c in list(self.connections) if c.conn.request_logout(LOGOUT_WITHIN)]
        for c in asked:
            c._pump()
        deadline = time.monotonic() + LOGOUT_WAIT
        while any(c in self.connections for c in asked) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self, grace: float = 5.0) -> int:
        """Stop accepting, let commands in flight finish (bounded), close connections.

        Connections stop reading first, so no new command starts; the commands already
        running get ``grace`` seconds, and their responses are written before each socket
        closes. Returns how many commands were still running when the grace ran out.
        """
        for server in self._servers:
            server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        await self._ask_initiators_to_log_out()
        for c in self.connections:
            c.stop_reading()
        running = [h for c in self.connections for h in c._running.values()]
        pending: set[asyncio.Task[None]] = set()
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
        for c in list(self.connections):
            c._pump()  # responses of the commands that just finished, before the close
            c.close()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.abort()
        for server in self._servers:
            await server.wait_closed()
        return len(pending)
