"""Stream devices (the tape, the file sink): one thing at a time touches the medium.

A copy manager writes records with the kernel's copy in a worker thread; a host command
arriving meanwhile must wait for that record rather than interleave with it and tear the
image. Copy commands themselves are exempt: the EXTENDED COPY that drives the copy may be
addressed to this very device and waits for the copy to finish.
"""

from __future__ import annotations

import asyncio

from scsi.command import ScsiCommand, ScsiResult
from scsi.logical_unit import Identity, LogicalUnit

_COPY_OPCODES = frozenset({0x83, 0x84})  # EXTENDED COPY, RECEIVE COPY RESULTS


class SerializedMedium(LogicalUnit):
    def __init__(self, identity: Identity) -> None:
        super().__init__(identity)
        self.medium_lock = asyncio.Lock()

    async def execute(self, cmd: ScsiCommand) -> ScsiResult:
        if cmd.cdb[0] in _COPY_OPCODES:
            return await super().execute(cmd)
        async with self.medium_lock:
            return await super().execute(cmd)
