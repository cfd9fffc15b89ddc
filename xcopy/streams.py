"""Stream devices as the copy engine sees them: records appended at the position, records
read from it. The tape LU keeps records and file marks in its image; the file sink keeps
plain bytes (a record is just the next bytes of the current file).

The methods block on the disk: the copy engine calls them through ``io``, the LU's own I/O
thread (scsi.stream_device), in order with the LU's other commands and off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from backing.file_sink import SinkFull
from scsi.file_sink import FileSinkDevice
from scsi.logical_unit import LogicalUnit
from scsi.sense import CheckCondition, Reason
from scsi.tape_device import TapeDevice
from xcopy.pacing import SLICE, GiveWay


class StreamMedium(Protocol):
    lock: asyncio.Lock  # the LU's medium lock: one thing at a time touches the medium
    io: Callable[..., Awaitable[Any]]  # the LU's I/O thread: ``await io(fn, *args)``

    def begin_write(self) -> None:
        """Before the first record: the medium must be writable; the position becomes
        the end of data (what follows it is cut, as a drive does)."""

    def append(self, payload: memoryview) -> None:
        """One record; CheckCondition VOLUME OVERFLOW if it does not fit."""

    def read_record(self, expected: int) -> bytes:
        """The next record, which must be ``expected`` bytes long (CheckCondition with
        FILEMARK, END OF DATA or ILI otherwise, as a READ would report)."""


class TapeMedium:
    def __init__(self, tape: TapeDevice) -> None:
        self.tape = tape
        self.lock = tape.medium_lock
        self.io = tape.io

    def begin_write(self) -> None:
        self.tape.require_writable()
        self.tape.begin_write()

    def append(self, payload: memoryview) -> None:
        tape = self.tape
        if not tape.image.fits(len(payload)):
            raise CheckCondition(Reason.VOLUME_OVERFLOW, information=1, eom=True)
        tape.image.append_record(payload)
        tape.position += 1

    def copy_record_from(self, fd: int, offset: int, length: int, pace: GiveWay) -> None:
        """One record whose payload the kernel copies from another file, in slices that
        give way to host I/O."""
        tape = self.tape
        if not tape.image.fits(length):
            raise CheckCondition(Reason.VOLUME_OVERFLOW, information=1, eom=True)
        pace.mark = time.monotonic()
        tape.image.append_record_from(fd, offset, length, step=SLICE, between=pace)
        tape.position += 1

    def read_record(self, expected: int) -> bytes:
        tape = self.tape
        tape.require_medium()
        image, pos = tape.image, tape.position
        if pos >= len(image):
            raise CheckCondition(Reason.END_OF_DATA_DETECTED, information=expected)
        if image.is_filemark(pos):
            tape.position = pos + 1
            raise CheckCondition(Reason.FILEMARK_DETECTED, information=expected, filemark=True)
        record = tape.read_record(pos)
        tape.position = pos + 1
        if len(record) != expected:
            raise CheckCondition(Reason.NO_SENSE, information=expected - len(record), ili=True)
        return record


class SinkMedium:
    def __init__(self, lu: FileSinkDevice) -> None:
        self.lu = lu
        self.lock = lu.medium_lock
        self.io = lu.io

    def begin_write(self) -> None:
        self.lu.require_writable()

    def append(self, payload: memoryview) -> None:
        try:
            self.lu.sink.write(payload)
        except SinkFull:
            raise CheckCondition(Reason.VOLUME_OVERFLOW, information=1, eom=True) from None

    def copy_from(self, fd: int, offset: int, length: int, pace: GiveWay) -> None:
        """Bytes of another file straight into the sink (no record boundaries to keep),
        in slices that give way to host I/O."""
        pace.mark = time.monotonic()
        try:
            self.lu.sink.copy_in(fd, offset, length, step=SLICE, between=pace)
        except SinkFull:
            raise CheckCondition(Reason.VOLUME_OVERFLOW, information=1, eom=True) from None

    def read_record(self, expected: int) -> bytes:
        sink = self.lu.sink
        data = sink.read(expected)
        if data is None:
            if sink.at_end_of_data:
                raise CheckCondition(Reason.END_OF_DATA_DETECTED, information=expected)
            raise CheckCondition(Reason.FILEMARK_DETECTED, information=expected, filemark=True)
        if len(data) != expected:
            raise CheckCondition(Reason.NO_SENSE, information=expected - len(data), ili=True)
        return data


def medium_of(lu: LogicalUnit) -> StreamMedium:
    if isinstance(lu, TapeDevice):
        return TapeMedium(lu)
    if isinstance(lu, FileSinkDevice):
        return SinkMedium(lu)
    raise CheckCondition(Reason.INCORRECT_COPY_TARGET_DEVICE_TYPE)
