"""A stream device serializes host commands against the copy manager's record writes, and
waits on the disk on its own thread, never on the event loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from scsi.command import Nexus, ScsiCommand, Status
from scsi.file_sink import FileSinkDevice
from scsi.logical_unit import Identity
from scsi.stream_device import SerializedMedium
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


def _spy_on_disk_calls(
    monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]
) -> list[tuple[str, int]]:
    """Record which thread makes each of the ``os`` calls ``names``."""
    calls: list[tuple[str, int]] = []
    for name in names:
        real = getattr(os, name)

        def spy(*args: Any, real: Any = real, name: str = name) -> Any:
            calls.append((name, threading.get_ident()))
            return real(*args)

        monkeypatch.setattr(os, name, spy)
    return calls


def _cdb6(op: int, flags: int = 0, length: int = 0) -> bytes:
    return bytes([op, flags]) + length.to_bytes(3, "big") + b"\0"


def _run_all(lu: SerializedMedium, commands: list[tuple[bytes, bytes | None]]) -> int:
    """Run ``commands`` in order (each GOOD); returns the event loop's thread."""

    async def main() -> int:
        for cdb, data in commands:
            cmd = ScsiCommand(
                cdb,
                0,
                NEXUS,
                data_out=None if data is None else memoryview(data),
                data_in_length=1 << 20,
            )
            result = await lu.execute(cmd)
            assert result.status == Status.GOOD, (cdb.hex(), result.sense)
        return threading.get_ident()

    return asyncio.run(main())


def test_tape_commands_wait_on_the_disk_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tape = TapeDevice.from_file(Identity("t"), tmp_path / "t.img", 64 << 20)
    calls = _spy_on_disk_calls(monkeypatch, ("pwritev", "pread", "fdatasync", "ftruncate"))
    record = os.urandom(1 << 20)
    loop_thread = _run_all(
        tape,
        [
            (_cdb6(0x0A, 0, len(record)), record),  # WRITE(6), variable
            (_cdb6(0x10, 0, 100_000), None),  # WRITE FILEMARKS: record, then marks, sync
            (_cdb6(0x01), None),  # REWIND
            (_cdb6(0x08, 0, len(record)), None),  # READ(6)
            (bytes([0x2B, 0, 0, 0, 0, 0, 1, 0, 0, 0]), None),  # LOCATE(10) to object 1
            (_cdb6(0x0A, 0, 4096), record[:4096]),  # WRITE(6) there: cuts the marks
            (_cdb6(0x19), None),  # ERASE
            (_cdb6(0x1B, 0, 0), None),  # UNLOAD
        ],
    )
    assert {name for name, _ in calls} == {"pwritev", "pread", "fdatasync", "ftruncate"}
    assert [name for name, thread in calls if thread == loop_thread] == []
    tape.close()


def test_file_sink_commands_wait_on_the_disk_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = FileSinkDevice.from_directory(Identity("s"), tmp_path / "sink", 64 << 20)
    calls = _spy_on_disk_calls(monkeypatch, ("pwrite", "fsync", "open"))
    data = os.urandom(1 << 20)
    loop_thread = _run_all(
        sink,
        [
            (_cdb6(0x0A, 0, len(data)), data),  # WRITE(6)
            (_cdb6(0x10, 0, 2), None),  # WRITE FILEMARKS: fsync, a new empty file
            (_cdb6(0x01), None),  # REWIND
            (_cdb6(0x08, 0, len(data)), None),  # READ(6)
        ],
    )
    assert {"pwrite", "fsync", "open"} <= {name for name, _ in calls}
    assert [name for name, thread in calls if thread == loop_thread] == []
    assert (tmp_path / "sink" / "file-0000.bin").read_bytes() == data
    sink.close()


def test_a_cancelled_command_keeps_the_medium_until_its_disk_call_ends(tmp_path: Path) -> None:
    """The thread cannot be stopped: the next command must not start before it is done."""
    tape = TapeDevice.from_file(Identity("t"), tmp_path / "t.img", 1 << 20)
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        finished.set()

    async def main() -> None:
        task = asyncio.ensure_future(tape.io(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()

    asyncio.run(main())
    tape.close()


def test_sigterm_flush_syncs_the_tape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tape = TapeDevice.from_file(Identity("t"), tmp_path / "t.img", 1 << 20)
    _run_all(tape, [(_cdb6(0x0A, 0, 10), b"0123456789")])
    calls = _spy_on_disk_calls(monkeypatch, ("fdatasync",))
    asyncio.run(tape.flush())
    assert [name for name, _ in calls] == ["fdatasync"]
    tape.close()


def test_close_on_a_running_loop_syncs_on_the_io_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that removes a tape LU closes it from the event loop: the sync of what it
    wrote happens on the LU's thread, and close() does not wait for it."""
    tape = TapeDevice.from_file(Identity("t"), tmp_path / "t.img", 1 << 20)
    _run_all(tape, [(_cdb6(0x0A, 0, 10), b"0123456789")])
    calls = _spy_on_disk_calls(monkeypatch, ("fdatasync",))
    image = tape.image

    async def main() -> int:
        tape.close()
        for _ in range(500):  # the I/O thread closes the image shortly after
            if image._fd < 0:
                break
            await asyncio.sleep(0.01)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert image._fd < 0
    assert [name for name, _ in calls] == ["fdatasync"]
    assert [name for name, thread in calls if thread == loop_thread] == []


def test_close_outside_a_loop_is_done_when_it_returns(tmp_path: Path) -> None:
    sink = FileSinkDevice.from_directory(Identity("s"), tmp_path / "sink", 1 << 20)
    _run_all(sink, [(_cdb6(0x0A, 0, 3), b"abc")])
    sink.close()
    assert sink.sink._fd is None
    assert (tmp_path / "sink" / "file-0000.bin").read_bytes() == b"abc"
