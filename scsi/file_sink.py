"""The file sink LU: a sequential-access device (type 1) whose medium is a directory of
plain files (backing.file_sink), one per tape file, holding exactly the bytes written.

It is an EXTENDED COPY destination first (block to stream, then a file mark: one plain
file per backup that an operator can ``cmp`` against the volume), and answers the few SSC
commands a host needs to write or read it directly, beside SPC's: READ BLOCK LIMITS,
READ(6), WRITE(6), WRITE FILEMARKS(6), REWIND. Record boundaries are not kept: a READ(6)
returns the next bytes of the current file (fewer only at its end, with ILI).

Whatever touches the directory (writes, reads, the fsync and new file of a file mark)
runs on the LU's I/O thread, in command order (scsi.stream_device).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backing.file_sink import FileSink, SinkFull
from scsi.cdb import data_out_mismatch
from scsi.command import ScsiCommand, ScsiResult, Status
from scsi.kernel_file import KernelFile, Readback
from scsi.logical_unit import NO_SERVICES, Identity, Services
from scsi.mode import ModePage
from scsi.opcodes import OpcodeTable
from scsi.sense import CheckCondition, FieldPointer, Reason
from scsi.spc import SPC_TABLE
from scsi.ssc import MAX_BLOCK_LENGTH, MAX_FIXED_TRANSFER, MIN_BLOCK_LENGTH
from scsi.stream_device import SerializedMedium

FILE_SINK_TABLE = OpcodeTable("file-sink", SPC_TABLE)
_cmd = FILE_SINK_TABLE.command
FIXED, SILI = 0x01, 0x02
# Every file mark leaves a file in the sink directory: one WRITE FILEMARKS of 2**24 - 1
# marks would fill the directory with millions of empty files.
MAX_SINK_FILES = 10_000


def _readbacks(observe: Callable[[Readback], None]) -> Callable[[int, int, int], None]:
    def landed(fd: int, at: int, n: int) -> None:
        observe(Readback(fd, at, n))

    return landed


def _invalid(byte: int, bit: int | None = None) -> CheckCondition:
    return CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(byte, bit=bit))


class FileSinkDevice(SerializedMedium):
    table = FILE_SINK_TABLE
    device_type = 0x01
    removable = True

    def __init__(
        self,
        identity: Identity,
        sink: FileSink,
        *,
        read_only: bool = False,
        services: Services = NO_SERVICES,
    ) -> None:
        super().__init__(identity, services)
        self.sink = sink
        self.read_only = read_only or sink.read_only
        self.block_size = 0

    @classmethod
    def from_directory(
        cls,
        identity: Identity,
        directory: Path,
        capacity: int,
        *,
        read_only: bool = False,
        services: Services = NO_SERVICES,
    ) -> FileSinkDevice:
        sink = FileSink(directory, capacity, read_only=read_only)
        return cls(identity, sink, read_only=read_only, services=services)

    def require_writable(self) -> None:
        if self.read_only:
            raise CheckCondition(Reason.WRITE_PROTECTED)

    def mode_pages(self) -> dict[int, ModePage]:
        return {0x00: ModePage(0x00, bytes(2), bytes(2))}

    def mode_device_specific(self) -> int:
        return 0x80 if self.read_only else 0

    def block_descriptor(self) -> bytes:
        return bytes(5) + self.block_size.to_bytes(3, "big")

    def sync_medium(self) -> None:
        self.sink.flush()

    # -- bytes for a copy manager (blocking: on the LU's I/O thread or a copy thread) ----
    def append_bytes(self, payload: bytes | memoryview) -> None:
        """Bytes at the end of the current file (a file sink keeps no record boundaries)."""
        try:
            self.sink.write(payload)
        except SinkFull:
            raise CheckCondition(Reason.VOLUME_OVERFLOW, information=1, eom=True) from None

    def append_from(
        self,
        source: KernelFile,
        offset: int,
        length: int,
        *,
        step: int = 0,
        between: Callable[[], None] | None = None,
        observe: Callable[[Readback], None] | None = None,
    ) -> None:
        """Bytes the kernel copies from ``source`` at ``offset`` to the current file.
        ``observe`` gets a :class:`Readback` of each slice as it lands (read later, on
        another thread, so the copy does not wait for it)."""
        landed = _readbacks(observe) if observe is not None else None
        try:
            self.sink.copy_in(source.fd, offset, length, step=step, between=between, observe=landed)
        except SinkFull:
            raise CheckCondition(Reason.VOLUME_OVERFLOW, information=1, eom=True) from None

    def next_bytes(self, expected: int) -> bytes:
        """The next ``expected`` bytes of the current file: CheckCondition with FILEMARK
        or END OF DATA at its end, ILI if fewer remain."""
        sink = self.sink
        data = sink.read(expected)
        if data is None:
            if sink.at_end_of_data:
                raise CheckCondition(Reason.END_OF_DATA_DETECTED, information=expected)
            raise CheckCondition(Reason.FILEMARK_DETECTED, information=expected, filemark=True)
        if len(data) != expected:
            raise CheckCondition(Reason.NO_SENSE, information=expected - len(data), ili=True)
        return data

    def close_medium(self) -> None:
        self.sink.close()


@_cmd(0x05, "READ BLOCK LIMITS", bytes([0x05, 0, 0, 0, 0, 0x07]))
async def read_block_limits(lu: FileSinkDevice, cmd: ScsiCommand) -> ScsiResult:
    data = bytes([0]) + MAX_BLOCK_LENGTH.to_bytes(3, "big") + MIN_BLOCK_LENGTH.to_bytes(2, "big")
    return ScsiResult(data=data)


def _transfer(lu: FileSinkDevice, cdb: bytes) -> tuple[int, bool]:
    flags, length = cdb[1], int.from_bytes(cdb[2:5], "big")
    fixed = bool(flags & FIXED)
    if fixed and not lu.block_size:
        raise _invalid(1, 0)
    size = length * lu.block_size if fixed else length
    if size > MAX_FIXED_TRANSFER or (not fixed and size > MAX_BLOCK_LENGTH):
        raise _invalid(2)
    return size, fixed


@_cmd(0x0A, "WRITE(6)", bytes([0x0A, 0x01, 0xFF, 0xFF, 0xFF, 0x07]))
async def write6(lu: FileSinkDevice, cmd: ScsiCommand) -> ScsiResult:
    if cmd.cdb[1] & 0xFE:
        raise _invalid(1)
    size, _ = _transfer(lu, cmd.cdb)
    lu.require_writable()
    data = cmd.data_out
    delivered = 0 if data is None else len(data)
    if delivered < size:
        return data_out_mismatch(lu, size)  # type: ignore[arg-type]
    if size:
        assert data is not None
        try:
            await lu.io(lu.sink.write, data[:size])
        except SinkFull:
            raise CheckCondition(Reason.VOLUME_OVERFLOW, information=size, eom=True) from None
    return ScsiResult() if delivered == size else ScsiResult(data_out_used=size)


def _read_unless_at_end(sink: FileSink, size: int) -> tuple[bool, bytes | None]:
    """(at end of data, what ``sink.read`` returned), in one call on the I/O thread."""
    if sink.at_end_of_data:
        return True, None
    return False, sink.read(size)


@_cmd(0x08, "READ(6)", bytes([0x08, 0x03, 0xFF, 0xFF, 0xFF, 0x07]))
async def read6(lu: FileSinkDevice, cmd: ScsiCommand) -> ScsiResult:
    flags = cmd.cdb[1]
    if flags & 0xFC or (flags & FIXED and flags & SILI):
        raise _invalid(1)
    size, fixed = _transfer(lu, cmd.cdb)
    if not size:
        return ScsiResult()
    sink = lu.sink
    # End of data is where the position was before the read: a read that ends the last
    # file passes that file's mark, and says so, as it does for every other file.
    at_end, data = await lu.io(_read_unless_at_end, sink, size)
    if at_end:
        raise CheckCondition(Reason.END_OF_DATA_DETECTED, information=size)
    if data is None:
        raise CheckCondition(Reason.FILEMARK_DETECTED, information=size, filemark=True)
    if len(data) == size or (flags & SILI and not fixed):
        return ScsiResult(data=data)
    cc = CheckCondition(Reason.NO_SENSE, information=size - len(data), ili=True)
    return ScsiResult(Status.CHECK_CONDITION, data=data, sense=cc.sense(lu.descriptor_sense))


@_cmd(0x10, "WRITE FILEMARKS(6)", bytes([0x10, 0x01, 0xFF, 0xFF, 0xFF, 0x07]))
async def write_filemarks6(lu: FileSinkDevice, cmd: ScsiCommand) -> ScsiResult:
    if cmd.cdb[1] & 0xFE:
        raise _invalid(1, 1)
    lu.require_writable()
    count = int.from_bytes(cmd.cdb[2:5], "big")
    if lu.sink.file + count > MAX_SINK_FILES:
        # The medium ends here: the marks do not fit, and none is written.
        raise CheckCondition(Reason.VOLUME_OVERFLOW, information=count, eom=True)
    await lu.io(lu.sink.write_filemarks, count)
    return ScsiResult()


@_cmd(0x01, "REWIND", bytes([0x01, 0x01, 0, 0, 0, 0x07]))
async def rewind(lu: FileSinkDevice, cmd: ScsiCommand) -> ScsiResult:
    if cmd.cdb[1] & 0xFE:
        raise _invalid(1)
    await lu.io(lu.sink.rewind)
    return ScsiResult()
