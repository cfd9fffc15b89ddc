"""Stream devices (the tape, the file sink): one thing at a time touches the medium, and
never on the event loop.

Commands run one at a time (``medium_lock``): a copy manager writes records with the
kernel's copy in a worker thread; a host command arriving meanwhile must wait for that
record rather than interleave with it and tear the image. Copy commands themselves are
exempt: the EXTENDED COPY that drives the copy may be addressed to this very device and
waits for the copy to finish.

Every call that may wait on the disk (a record written or read, a file mark, the
``fdatasync`` a file mark or REWIND asks for, a cut at the head) runs on the LU's own
thread through :meth:`SerializedMedium.io`: one thread per LU, so the medium sees its
calls in the order the commands made them, and the loop keeps serving other sessions
while a multi-MiB record or a sync of a large image waits on the disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from backing.threads import outlast
from scsi.command import ScsiCommand, ScsiResult
from scsi.logical_unit import NO_SERVICES, Identity, LogicalUnit, Services

_COPY_OPCODES = frozenset({0x83, 0x84})  # EXTENDED COPY, RECEIVE COPY RESULTS
T = TypeVar("T")


class SerializedMedium(LogicalUnit):
    def __init__(self, identity: Identity, services: Services = NO_SERVICES) -> None:
        super().__init__(identity, services)
        self.medium_lock = asyncio.Lock()
        self._io: ThreadPoolExecutor | None = None

    async def execute(self, cmd: ScsiCommand) -> ScsiResult:
        if cmd.cdb[0] in _COPY_OPCODES:
            return await super().execute(cmd)
        async with self.medium_lock:
            return await super().execute(cmd)

    async def execute_for(self, cmd: ScsiCommand) -> ScsiResult:
        """A copy manager's command waits for the medium like a host's."""
        async with self.medium_lock:
            return await super().execute_for(cmd)

    async def io(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the LU's I/O thread, in order with every earlier call.

        A caller cancelled meanwhile (an aborted task, a dropped connection) still waits
        for the call to end before it lets go of the medium: the thread cannot be stopped,
        and the next command must see the medium as this call left it."""
        if self._io is None:
            name = f"medium:{self.identity.device_id[-32:]}"  # the LUN's end of the id
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        return await outlast(asyncio.get_running_loop().run_in_executor(self._io, fn, *args))

    async def flush(self) -> None:
        """Everything written so far made durable (SIGTERM, before the daemon exits)."""
        async with self.medium_lock:
            await self.io(self.sync_medium)

    def sync_medium(self) -> None:
        """Blocking: make the medium durable. Device types override it."""

    def close_medium(self) -> None:
        """Blocking: sync and close the medium. Device types override it."""

    def close(self) -> None:
        """Let go of the medium after the last command. Called on a running event loop (a
        reload that removed the LU), the sync and close run on the I/O thread after
        whatever it still has queued, and this returns at once; elsewhere, here and now."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._io is not None:
                self._io.shutdown(wait=True)
                self._io = None
            self.close_medium()
            return
        if self._io is None:
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medium-close")
        self._io.submit(self.close_medium)
        self._io.shutdown(wait=False)  # the thread ends after the close
        self._io = None
