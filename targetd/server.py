"""The asyncio shell around the sans-I/O connection: sockets in, SCSI execution, bytes out.

Received bytes land where :class:`PduReceiver` says (a ``BufferedProtocol``: no copies
for large Data-Out); each SCSI command runs as its own asyncio task so that task
management can cancel it; output is written with ``writelines`` so header and data go out
in one vectored write. Reading pauses while the socket's write buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from scsi.command import ScsiResult, Status
from scsi.sense import Reason, build_sense
from scsi.target import ScsiTarget
from targetd import eager
from targetd.config import Config, Portal
from targetd.iscsi.connection import (
    AbortTasks,
    CloseConnection,
    Connection,
    ExecuteCommand,
    ResetRequested,
    SessionStarted,
    Task,
)
from targetd.iscsi.session import Session, SessionTable

log = logging.getLogger("targetd")

TICK_SECONDS = 5.0


@dataclass
class TargetRuntime:
    """A configured target and the SCSI device that serves its LUNs."""

    name: str
    scsi: ScsiTarget
    connections: set[IscsiConnection] = field(default_factory=set)


class IscsiConnection(asyncio.BufferedProtocol):
    def __init__(self, server: TargetServer, portal: Portal) -> None:
        self.server = server
        self.portal = portal
        self.conn = Connection(server.config, portal, server.sessions)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.runtime: TargetRuntime | None = None
        self._running: dict[Task, asyncio.Task[None]] = {}
        self._closing = False
        self._flush_scheduled = False
        self._waiters: set[asyncio.Future[None]] = set()

    # -- asyncio protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.conn.now = time.monotonic()
        self.conn.last_heard = self.conn.now
        self.server.connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.receiver.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.now = self.server.now
        self.conn.data_received(nbytes)
        self._pump()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for task in self.conn.closed():
            handle = self._running.pop(task, None)
            if handle is not None:
                handle.cancel()
        if self.runtime is not None:
            self.runtime.connections.discard(self)
        session = self.conn.session
        if session is not None:
            if self.conn in session.connections:
                session.connections.remove(self.conn)
            if not session.connections and not session.closed:
                self.server.end_session(session)
                if self.runtime is not None and self.conn.nexus is not None:
                    self.runtime.scsi.nexus_lost(self.conn.nexus)
        log.info("connection from %s closed%s", self.peer, f": {exc}" if exc else "")

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()

    # -- driving the state machine -------------------------------------------------
    def _pump(self) -> None:
        out = self.conn.take_output()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)
        for event in self.conn.take_events():
            self._EVENT_HANDLERS[type(event)](self, event)

    def _on_execute(self, event: ExecuteCommand) -> None:
        runtime = self.runtime
        if runtime is None:
            return
        handle = eager.start(self._execute(runtime.scsi, event))
        if not isinstance(handle, eager.Done):
            self._running[event.task] = handle

    async def _execute(self, scsi: ScsiTarget, event: ExecuteCommand) -> None:
        try:
            result = await scsi.execute(event.command)
        except asyncio.CancelledError:
            self._running.pop(event.task, None)
            raise
        except Exception:
            log.exception("command %s failed", event.command.cdb[:1].hex())
            result = ScsiResult(
                Status.CHECK_CONDITION, sense=build_sense(Reason.INTERNAL_TARGET_FAILURE)
            )
        self._running.pop(event.task, None)
        self.conn.scsi_done(event.task, result)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Write once per loop iteration, however many commands completed in it."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

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
            luns = [event.lun] if event.lun is not None else list(runtime.scsi.luns)
            for lun in luns:
                lu = runtime.scsi.luns.get(lun)
                if lu is not None:
                    reset = getattr(lu, "reset", None)
                    if reset is not None:
                        reset(event.nexus)
                    else:
                        lu.raise_unit_attention(Reason.BUS_DEVICE_RESET, except_nexus=None)
        if event.cold and runtime is not None:
            victims = list(runtime.connections)

            def respond_then_drop() -> None:
                self.conn.aborts_finished(event.token)
                self._pump()
                for c in victims:
                    c.close()

            self._after(handles, respond_then_drop)
            return
        self._after(handles, lambda: self.conn.aborts_finished(event.token))

    def _cancel(self, tasks: Iterable[Task]) -> list[asyncio.Task[None]]:
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
            "login from %s: %s session of %s isid %s tsih %d%s",
            self.peer,
            session.session_type.lower(),
            session.initiator_name,
            session.isid.hex(),
            session.tsih,
            f" to {target.name}" if target else "",
        )
        if target is not None and self.conn.nexus is not None:
            self.runtime = self.server.targets[target.name]
            self.runtime.connections.add(self)
            self.runtime.scsi.nexus_established(self.conn.nexus)

    def _on_close(self, event: CloseConnection) -> None:
        if event.reason not in ("logout",):
            log.info("closing connection from %s: %s", self.peer, event.reason)
        self.close()

    def close(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    _EVENT_HANDLERS = {
        ExecuteCommand: _on_execute,
        AbortTasks: _on_abort,
        ResetRequested: _on_reset,
        SessionStarted: _on_session_started,
        CloseConnection: _on_close,
    }


class TargetServer:
    """Listens on the configured portals and owns the sessions and SCSI targets."""

    def __init__(self, config: Config, targets: dict[str, ScsiTarget]) -> None:
        self.config = config
        self.targets = {name: TargetRuntime(name, scsi) for name, scsi in targets.items()}
        self.sessions = SessionTable(config.max_sessions, config.max_connections_per_session)
        self.sessions.on_reinstate = self._reinstate
        self.connections: set[IscsiConnection] = set()
        self._servers: list[asyncio.base_events.Server] = []
        self._ticker: asyncio.Task[None] | None = None
        self.now = time.monotonic()
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for portal in self.config.portals:
            server = await loop.create_server(
                lambda p=portal: IscsiConnection(self, p),
                portal.listen_host,
                portal.listen_port,
                reuse_address=True,
                backlog=128,
            )
            self._servers.append(server)
            for sock in server.sockets:
                self.bound.append(sock.getsockname()[:2])
        self._ticker = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.now = time.monotonic()
            for c in list(self.connections):
                c.conn.tick(self.now)
                c._pump()

    def _reinstate(self, old: Session) -> None:
        log.info("reinstating session tsih %d of %s", old.tsih, old.initiator_name)
        for c in list(self.connections):
            if c.conn.session is old:
                c.close()

    def end_session(self, session: Session) -> None:
        self.sessions.remove(session)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let commands in flight finish (bounded), close connections."""
        for server in self._servers:
            server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        running = [h for c in self.connections for h in c._running.values()]
        if running:
            await asyncio.wait(running, timeout=grace)
        for c in list(self.connections):
            c.close()
        for server in self._servers:
            await server.wait_closed()
