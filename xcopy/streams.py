"""Stream devices as the copy engine sees them: records appended at the position, records
read from it. The tape LU keeps records and file marks in its image; the file sink keeps
plain bytes (a record is just the next bytes of the current file).

Every call goes to the device's own operations (``TapeDevice.append_record``,
``FileSinkDevice.append_bytes`` ...), never to its image or directory: the blocking ones
on the LU's own I/O thread (``SerializedMedium.io``), in order with its host commands;
kernel copies on the copy threads (:mod:`xcopy.pacing`), with the LU's medium lock held
by the engine. The engine holds ``lock`` around each call, so a host command's records
never land between a copy's.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from backing.threads import outlast
from scsi.kernel_file import KernelFile
from scsi.logical_unit import LogicalUnit
from scsi.sense import CheckCondition, Reason
from xcopy.digests import Observer
from xcopy.pacing import SLICE, GiveWay, copy_executor

if TYPE_CHECKING:
    from scsi.file_sink import FileSinkDevice
    from scsi.tape_device import TapeDevice


class StreamMedium(Protocol):
    lock: asyncio.Lock  # the LU's medium lock: one thing at a time touches the medium

    async def begin_write(self) -> None:
        """Before the first record: the medium must be writable; the position becomes
        the end of data (what follows it is cut, as a drive does)."""

    async def append_records(
        self, data: memoryview, record: int, observe: Observer | None = None
    ) -> int:
        """``data`` as records of ``record`` bytes, in one trip to the LU's I/O thread;
        returns how many. CheckCondition VOLUME OVERFLOW when one does not fit.
        ``observe`` (a backup's digest) is handed each record once it is written."""

    async def append_from(
        self,
        source: KernelFile,
        offset: int,
        length: int,
        pace: GiveWay,
        observe: Observer | None = None,
    ) -> None:
        """One record (a tape) or bytes (a sink) the kernel copies from ``source``;
        ``observe`` is handed what landed (the bytes, or a read-back of them)."""

    async def read_records(
        self, expected: int, count: int, observe: Observer | None = None
    ) -> bytes:
        """The next ``count`` records, each of which must be ``expected`` bytes long
        (CheckCondition with FILEMARK, END OF DATA or ILI otherwise, as a READ would
        report), joined, in one trip to the LU's I/O thread; ``observe`` is handed each."""


async def _on_copy_thread(fn: Callable[[], None]) -> None:
    """``fn()`` on a copy thread. A copy cancelled meanwhile (COPY OPERATION ABORT, its
    session gone) waits for the call to end before it lets go of the medium lock: the
    thread cannot be stopped, and a file mark or record the host writes next must land
    after it, not under it (the tape image's index then named one offset twice)."""
    await outlast(asyncio.get_running_loop().run_in_executor(copy_executor(), fn))


class TapeMedium:
    def __init__(self, tape: TapeDevice) -> None:
        self.tape = tape
        self.lock = tape.medium_lock

    async def begin_write(self) -> None:
        self.tape.require_writable()
        await self.tape.io(self.tape.begin_write)

    async def append_records(
        self, data: memoryview, record: int, observe: Observer | None = None
    ) -> int:
        tape = self.tape
        return await tape.io(_in_records, tape.append_record, data, record, observe)

    async def append_from(
        self,
        source: KernelFile,
        offset: int,
        length: int,
        pace: GiveWay,
        observe: Observer | None = None,
    ) -> None:
        """One record whose payload the kernel copies, in slices that give way to hosts."""
        pace.mark = time.monotonic()
        tape = self.tape
        await _on_copy_thread(
            lambda: tape.append_record_from(
                source, offset, length, step=SLICE, between=pace, observe=observe
            )
        )

    async def read_records(
        self, expected: int, count: int, observe: Observer | None = None
    ) -> bytes:
        tape = self.tape
        return await tape.io(_joined, tape.next_record, expected, count, observe)


class SinkMedium:
    def __init__(self, lu: FileSinkDevice) -> None:
        self.lu = lu
        self.lock = lu.medium_lock

    async def begin_write(self) -> None:
        self.lu.require_writable()

    async def append_records(
        self, data: memoryview, record: int, observe: Observer | None = None
    ) -> int:
        lu = self.lu
        return await lu.io(_in_records, lu.append_bytes, data, record, observe)

    async def append_from(
        self,
        source: KernelFile,
        offset: int,
        length: int,
        pace: GiveWay,
        observe: Observer | None = None,
    ) -> None:
        """Bytes of another file straight into the sink (no record boundaries to keep),
        in slices that give way to host I/O."""
        pace.mark = time.monotonic()
        lu = self.lu
        await _on_copy_thread(
            lambda: lu.append_from(
                source, offset, length, step=SLICE, between=pace, observe=observe
            )
        )

    async def read_records(
        self, expected: int, count: int, observe: Observer | None = None
    ) -> bytes:
        lu = self.lu
        return await lu.io(_joined, lu.next_bytes, expected, count, observe)


def _in_records(
    append: Callable[[memoryview], None],
    data: memoryview,
    record: int,
    observe: Observer | None = None,
) -> int:
    """Blocking: ``data`` appended as records of ``record`` bytes; how many."""
    count = 0
    for start in range(0, len(data), record):
        append(data[start : start + record])
        if observe is not None:
            observe(data[start : start + record])
        count += 1
    return count


def _joined(
    read: Callable[[int], bytes], expected: int, count: int, observe: Observer | None = None
) -> bytes:
    """Blocking: ``count`` records of ``expected`` bytes, joined."""
    records = []
    for _ in range(count):
        records.append(read(expected))
        if observe is not None:
            observe(records[-1])
    return b"".join(records)


def medium_of(lu: LogicalUnit) -> StreamMedium:
    # A module not loaded has no LU (targetd.luns imports them with the first such LU).
    tapes = sys.modules.get("scsi.tape_device")
    if tapes is not None and isinstance(lu, tapes.TapeDevice):
        return TapeMedium(lu)
    sinks = sys.modules.get("scsi.file_sink")
    if sinks is not None and isinstance(lu, sinks.FileSinkDevice):
        return SinkMedium(lu)
    raise CheckCondition(Reason.INCORRECT_COPY_TARGET_DEVICE_TYPE)
