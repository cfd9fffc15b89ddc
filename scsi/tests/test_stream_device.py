"""A stream device serializes host commands against the copy manager's record writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from scsi.command import Nexus, ScsiCommand, Status
from scsi.logical_unit import Identity
from scsi.tape_device import TapeDevice

NEXUS = Nexus("iqn.2026-11.org.test:i,i,0x1")
READ_POSITION = bytes([0x34]) + bytes(9)
RECEIVE_COPY_RESULTS = bytes([0x84, 0x03]) + bytes(8) + (64).to_bytes(4, "big") + bytes(2)


def test_host_commands_wait_while_a_record_is_being_copied(tmp_path: Path) -> None:
    tape = TapeDevice.from_file(Identity("t"), tmp_path / "t.img", 1 << 20)

    async def main() -> None:
        async with tape.medium_lock:  # as the copy engine holds it around one record
            host = asyncio.ensure_future(tape.execute(ScsiCommand(READ_POSITION, 0, NEXUS)))
            copy = asyncio.ensure_future(
                tape.execute(ScsiCommand(RECEIVE_COPY_RESULTS, 0, NEXUS, data_in_length=64))
            )
            await asyncio.sleep(0.05)
            assert not host.done()  # waits for the record
            assert copy.done()  # copy commands are exempt: they may drive this very copy
        result = await host
        assert result.status in (Status.GOOD, Status.CHECK_CONDITION)

    asyncio.run(main())
