"""Runs planned steps: data moves between LUs through their device objects, in chunks.

A block source is read through its :class:`~xcopy.readers.SourceReader` (the pair-policy
seam) one chunk at a time, at most ``limits.QUEUE_DEPTH`` chunks ahead of the writer, so
a copy holds a few MiB whatever its length. Holes of a block source (SEEK_DATA/SEEK_HOLE
via the reader's extent map) are punched on a block destination rather than written;
all-zero chunks restored from a stream are punched too. A stream destination (the tape
LU) gets records of the length the stream CSCD asks for, at its current position.

The copy is one more initiator of each LU (:mod:`xcopy.access`): every chunk, record
and kernel copy is admitted by the LU under the reservations of the I_T nexus that sent
the EXTENDED COPY, and tape commands run through the LU's own command path.

Any failure of a copy target becomes :class:`~xcopy.errors.CopyAborted` naming the
segment, the residue and (appended) the target's own sense.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from backing.pairs.states import ErrorCode, PairError
from backing.sparse_file import Extent
from backing.threads import outlast
from scsi.block_device import ALLOCATION_UNIT, BlockDevice
from scsi.command import Nexus, Status
from scsi.kernel_file import KernelFile
from scsi.logical_unit import LogicalUnit
from scsi.sense import CheckCondition, Reason, build_sense
from xcopy import access, labels, limits
from xcopy.access import Refused
from xcopy.digests import Digests, Observer, StreamDigest
from xcopy.errors import CopyAborted
from xcopy.pacing import SLICE, GiveWay, copy_executor
from xcopy.params import (
    BLOCK_TO_BLOCK,
    BLOCK_TO_STREAM,
    BYTES_BLOCK_TO_BLOCK,
    CHECK_LABEL,
    INLINE_TO_STREAM,
    LOCATE,
    SPACE,
    SPLIT_PAIR,
    START_DIGEST,
    STREAM_TO_BLOCK,
    WRITE_FILEMARKS,
    WRITE_LABEL,
    CopyList,
)
from xcopy.plan import Step
from xcopy.policies import split_for_copy
from xcopy.readers import ReaderFactory, SourceReader, SourceUnavailable
from xcopy.streams import SinkMedium, StreamMedium, TapeMedium, medium_of

# Bytes per copy_file_range call: a few ms of kernel copying between two looks at the loop.
KERNEL_CHUNK = 8 * 1024 * 1024


class Progress(Protocol):
    segments_processed: int
    bytes_done: int


@dataclass
class _Segment:
    """Bytes of the running segment done so far, for its residue if it fails."""

    step: Step
    done: int = 0


class _ZeroReader:
    """A NUL block source: zeros, one hole."""

    async def prepare(self, offset: int, length: int) -> None:
        return None

    async def read_into(self, offset: int, buf: memoryview) -> None:
        buf[:] = bytes(len(buf))

    def extents(self, offset: int, length: int) -> list[Extent]:
        return [Extent(offset, length, False)]

    async def close(self) -> None:
        return None


@dataclass
class CopyRun:
    """One copy list's execution: its readers, progress, and the segment being run."""

    copy_list: CopyList
    steps: list[Step]
    reader_factory: ReaderFactory
    nexus: Nexus
    progress: Progress
    # Called after each segment: the manager records progress that survives a restart.
    segment_done: Callable[[], None] = lambda: None
    # The copy manager's open backup digests (START DIGEST ... WRITE LABEL, across lists).
    digests: Digests = field(default_factory=Digests)
    _readers: dict[int, SourceReader] = field(default_factory=dict)
    _fed: dict[int, LogicalUnit] = field(default_factory=dict)  # streams whose digest we fed

    def digest(self, lu: LogicalUnit) -> StreamDigest | None:
        """The open digest of ``lu`` for this copy's nexus, if any."""
        found = self.digests.get(self.nexus.initiator_port, lu)
        if found is not None:
            self._fed[id(lu)] = lu
        return found

    def observer(self, lu: LogicalUnit | None) -> Observer | None:
        found = self.digest(lu) if lu is not None else None
        return found.feed if found is not None else None

    async def run(self, answer: asyncio.Event | None = None) -> None:
        """Run every step; ``answer`` is set once the copy may be reported as started
        (IMMED): after the leading SPLIT PAIR segments and the source checks. A copy that
        does not end well drops the digests it fed: what they hashed is not what a
        complete backup holds, so no end label may carry them."""
        try:
            await self._run_all(answer)
        except BaseException:
            for lu in self._fed.values():
                self.digests.discard(self.nexus.initiator_port, lu)
            raise

    async def _run_all(self, answer: asyncio.Event | None) -> None:
        try:
            steps = self.steps
            leading = 0
            while leading < len(steps) and steps[leading].segment.type_code == SPLIT_PAIR:
                await self._run_step(steps[leading])
                leading += 1
            for step in steps[leading:]:  # every source is checked before a byte moves
                if step.source is not None and step.source.device_type == 0x00:
                    await self._guarded(_Segment(step), self.reader(step))
            if answer is not None:
                answer.set()
            for step in steps[leading:]:
                await self._run_step(step)
        finally:
            for reader in self._readers.values():
                with contextlib.suppress(Exception):
                    await reader.close()

    async def _run_step(self, step: Step) -> None:
        current = _Segment(step)
        await self._guarded(current, _HANDLERS[step.segment.type_code](self, current))
        self.progress.segments_processed += 1
        self.segment_done()

    async def _guarded(self, current: _Segment, work: Awaitable[object]) -> None:
        """Await ``work``; whatever a copy target raises becomes COPY ABORTED."""
        try:
            await work
        except CopyAborted:
            raise
        except Refused as err:
            raise self._refused(current, err) from None
        except CheckCondition as cc:
            raise self.aborted(current, Reason.COPY_ABORTED_NO_ADDITIONAL_SENSE, cc) from None
        except SourceUnavailable as err:
            raise self.aborted(current, err.reason, message=str(err)) from err
        except PairError as err:
            if err.code is ErrorCode.RESERVATION_CONFLICT:  # a pair volume is reserved
                aborted = self.aborted(
                    current, Reason.COPY_ABORTED_NO_ADDITIONAL_SENSE, message=str(err)
                )
                aborted.target_status = int(Status.RESERVATION_CONFLICT)
                aborted.from_destination = current.step.segment.type_code == SPLIT_PAIR
                aborted.field = 6 if aborted.from_destination else 4
                raise aborted from err
            # The segment named a volume that is the primary of several pairs: which one?
            ambiguous = err.code is ErrorCode.AMBIGUOUS_VOLUME
            sense = build_sense(Reason.PAIR_LUN_AMBIGUOUS if ambiguous else Reason.PAIR_WRONG_STATE)
            aborted = self.aborted(current, Reason.COPY_SOURCE_PAIR_NOT_SPLIT, message=str(err))
            aborted.target_sense = sense
            raise aborted from err
        except OSError as err:
            raise self.aborted(
                current, Reason.THIRD_PARTY_DEVICE_FAILURE, message=str(err)
            ) from err

    def _refused(self, current: _Segment, err: Refused) -> CopyAborted:
        """A copy target's refusal (RESERVATION CONFLICT, a CHECK CONDITION) forwarded."""
        step = current.step
        aborted = self.aborted(current, Reason.COPY_ABORTED_NO_ADDITIONAL_SENSE, message=str(err))
        aborted.target_status = int(err.result.status)
        aborted.target_sense = err.result.sense
        aborted.from_destination = err.lu is step.destination.lu
        return aborted

    def aborted(
        self,
        current: _Segment,
        reason: Reason,
        cc: CheckCondition | None = None,
        *,
        message: str = "",
    ) -> CopyAborted:
        step = current.step
        remaining = max(0, step.length - current.done)
        return CopyAborted(
            reason,
            step.segment.index,
            residue=-(-remaining // step.unit),
            target_sense=cc.sense() if cc is not None else None,
            message=message or (str(cc) if cc else reason.name),
        )

    async def reader(self, step: Step) -> SourceReader:
        source = step.source
        assert source is not None
        if source.lu is None:
            return _ZeroReader()
        key = id(source.lu)
        if key not in self._readers:
            assert isinstance(source.lu, BlockDevice)
            access.may_read(source.lu, self.nexus)
            reader = await self.reader_factory(source.lu, self.copy_list, self.nexus)
            self._readers[key] = _AdmittedReader(reader, source.lu, self.nexus)
        return self._readers[key]


class _AdmittedReader:
    """A source reader whose every read is admitted by the LU first (READ(16) on behalf
    of the copy's nexus): a reservation taken mid-copy stops it at the next chunk."""

    def __init__(self, reader: SourceReader, lu: LogicalUnit, nexus: Nexus) -> None:
        self.reader = reader
        self.lu = lu
        self.nexus = nexus

    async def prepare(self, offset: int, length: int) -> None:
        access.may_read(self.lu, self.nexus)
        await self.reader.prepare(offset, length)

    async def read_into(self, offset: int, buf: memoryview) -> None:
        access.may_read(self.lu, self.nexus)
        await self.reader.read_into(offset, buf)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.reader.extents(offset, length)

    def kernel_source(self) -> int | None:
        return getattr(self.reader, "kernel_source", lambda: None)()

    def check(self) -> None:
        getattr(self.reader, "check", lambda: None)()

    async def close(self) -> None:
        await self.reader.close()


# -- moving bytes ---------------------------------------------------------------------
Sink = Callable[[int, memoryview], Awaitable[None]]


async def _pump(
    reader: SourceReader, offset: int, length: int, chunk: int, sink: Sink, current: _Segment
) -> None:
    """Read ``[offset, offset+length)`` in chunks and hand each to ``sink(position, data)``
    in order, reading at most QUEUE_DEPTH chunks ahead of it."""
    queue: asyncio.Queue[tuple[int, bytearray] | BaseException | None] = asyncio.Queue(
        maxsize=limits.QUEUE_DEPTH
    )

    async def produce() -> None:
        try:
            pos = 0
            while pos < length:
                n = min(chunk, length - pos)
                buf = bytearray(n)
                await reader.read_into(offset + pos, memoryview(buf))
                await queue.put((pos, buf))
                pos += n
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # handed to the consumer, which raises it
            await queue.put(err)

    producer = asyncio.create_task(produce())
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            pos, buf = item
            await sink(pos, memoryview(buf))
            current.done += len(buf)
    finally:
        if not producer.done():
            producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


def _chunks(offset: int, length: int, chunk: int, backwards: bool) -> list[tuple[int, int]]:
    runs = [
        (pos, min(chunk, offset + length - pos)) for pos in range(offset, offset + length, chunk)
    ]
    return runs[::-1] if backwards else runs


async def _block_to_block(run: CopyRun, current: _Segment) -> None:
    step = current.step
    dst = step.destination.lu
    if not step.length:
        return
    reader = await run.reader(step)
    await reader.prepare(step.source_offset, step.length)
    progress = run.progress
    if dst is None:  # NUL destination: the data goes nowhere
        current.done = step.length
        progress.bytes_done += step.length
        return
    assert isinstance(dst, BlockDevice)
    delta = step.destination_offset - step.source_offset
    same = step.source is not None and step.source.lu is dst
    if same and abs(delta) < step.length:
        # Overlapping ranges of one LU: copy in the direction that reads before it writes.
        for pos, n in _chunks(step.source_offset, step.length, limits.CHUNK, delta > 0):
            buf = bytearray(n)
            await reader.read_into(pos, memoryview(buf))
            access.may_write(dst, run.nexus)
            await dst.write_bytes(pos + delta, memoryview(buf), False)
            current.done += n
            progress.bytes_done += n
        return

    async def write(pos: int, data: memoryview) -> None:
        access.may_write(dst, run.nexus)
        await dst.write_bytes(step.destination_offset + pos, data, False)
        progress.bytes_done += len(data)

    src_file = _kernel_source(reader)
    kernel = src_file is not None and dst.kernel_writable()
    base = step.source_offset
    for extent in reader.extents(base, step.length):
        rel = extent.offset - base
        if not extent.mapped:
            access.may_write(dst, run.nexus)
            await dst.deallocate(step.destination_offset + rel, extent.length, punch=True)
            current.done += extent.length
            progress.bytes_done += extent.length
            continue
        if kernel:
            assert src_file is not None
            await _kernel_block_copy(run, reader, src_file, dst, extent, rel, step, current)
            continue

        async def write_at(pos: int, data: memoryview, rel: int = rel) -> None:
            await write(rel + pos, data)

        await _pump(reader, extent.offset, extent.length, limits.CHUNK, write_at, current)


def _kernel_source(reader: SourceReader) -> KernelFile | None:
    """The file the source LU says holds what the reader delivers (None: read it)."""
    source: KernelFile | None = getattr(reader, "kernel_source", lambda: None)()
    return source


async def _kernel_block_copy(
    run: CopyRun,
    reader: SourceReader,
    source: KernelFile,
    dst: BlockDevice,
    extent: Extent,
    rel: int,
    step: Step,
    current: _Segment,
) -> None:
    """A mapped extent copied by the kernel into the destination LU, KERNEL_CHUNK at a
    time, each one a write the LU makes through its gate and write hook."""
    loop = asyncio.get_running_loop()
    pool = copy_executor()
    pace = GiveWay()
    verify = getattr(reader, "check", lambda: None)
    progress = run.progress
    for pos, n in _chunks(extent.offset, extent.length, KERNEL_CHUNK, False):
        at = step.destination_offset + rel + (pos - extent.offset)

        async def copy(file: KernelFile, pos: int = pos, at: int = at, n: int = n) -> None:
            def blocking() -> None:
                pace.mark = time.monotonic()
                source.copy_to(file, pos, at, n, step=SLICE, between=pace)

            # Cancelled (an abort), it still waits for the thread: the LU's write gate
            # must not open for a host write the copy can still land on top of.
            await outlast(loop.run_in_executor(pool, blocking))

        access.may_read(step.source.lu if step.source else None, run.nexus)
        access.may_write(dst, run.nexus)
        await dst.write_from_file(at, n, copy)
        verify()
        current.done += n
        progress.bytes_done += n


def _medium(step: Step, *, write: bool) -> StreamMedium:
    end = step.destination if write else step.source
    assert end is not None and end.lu is not None
    return medium_of(end.lu)


async def _block_to_stream(run: CopyRun, current: _Segment) -> None:
    step = current.step
    if step.destination.lu is None:  # NUL stream destination
        current.done = step.length
        return
    medium = _medium(step, write=True)
    if not step.records:
        return
    stream = step.destination.lu
    async with medium.lock:
        access.may_write(stream, run.nexus)
        await medium.begin_write()
    record = step.record_length
    chunk = record * max(1, limits.CHUNK // record)
    written = 0
    progress = run.progress

    stream = step.destination.lu

    observe = run.observer(stream)
    digest = run.digest(stream) if stream is not None else None
    if digest is not None:
        digest.records += step.records

    async def sink(pos: int, data: memoryview) -> None:
        nonlocal written
        if len(data) % record:  # the tail of the data: pad the last record with zeros
            data = memoryview(bytes(data) + bytes(record - len(data) % record))
        async with medium.lock:  # records of a host's WRITE never land between ours
            access.may_write(stream, run.nexus)
            written += await medium.append_records(data, record, observe)
        progress.bytes_done += len(data)

    if step.length:
        reader = await run.reader(step)
        await reader.prepare(step.source_offset, step.length)
        source = _kernel_source(reader)
        # After each kernel copy: did the source stay what it was (a split pair's image)?
        verify = getattr(reader, "check", lambda: None)
        # Kernel copies run on the copy threads, in slices that give way to host commands
        # (xcopy.pacing): on the event loop, a multi-MiB copy_file_range stalls every host
        # command for its duration (p99 of host writes 50-100x idle).
        pace = GiveWay()
        if source is not None and isinstance(medium, TapeMedium) and not step.pad:
            # Each record's payload copied by the kernel into the tape image.
            for pos, n in _chunks(step.source_offset, step.length, record, False):
                async with medium.lock:  # host commands wait for the record
                    access.may_read(step.source.lu if step.source else None, run.nexus)
                    access.may_write(stream, run.nexus)
                    await medium.append_from(source, pos, n, pace, observe)
                verify()
                current.done += n
                progress.bytes_done += n
            return
        if source is not None and isinstance(medium, SinkMedium):
            # A plain file into a plain file: the kernel copies it (copy_file_range).
            for pos, n in _chunks(step.source_offset, step.length, KERNEL_CHUNK, False):
                async with medium.lock:
                    access.may_read(step.source.lu if step.source else None, run.nexus)
                    access.may_write(stream, run.nexus)
                    await medium.append_from(source, pos, n, pace, observe)
                verify()
                current.done += n
                progress.bytes_done += n
            if step.pad:
                async with medium.lock:
                    access.may_write(stream, run.nexus)
                    await medium.append_records(memoryview(bytes(step.pad)), step.pad, observe)
            written = step.records
        else:
            await _pump(reader, step.source_offset, step.length, chunk, sink, current)
    zero = memoryview(bytes(record))
    while written < step.records:  # padding beyond the data: whole zero records
        async with medium.lock:
            access.may_write(stream, run.nexus)
            written += await medium.append_records(zero, record, observe)
        progress.bytes_done += record


async def _stream_to_block(run: CopyRun, current: _Segment) -> None:
    step = current.step
    dst = step.destination.lu
    src_null = step.source is None or step.source.lu is None
    medium = None if src_null else _medium(step, write=False)
    record = step.record_length
    per_chunk = max(1, limits.CHUNK // record) if record else 1
    pos = 0
    remaining_records = step.records
    progress = run.progress
    observe = None
    if step.source is not None and step.source.lu is not None:
        observe = run.observer(step.source.lu)
        digest = run.digest(step.source.lu)
        if digest is not None:
            digest.records += step.records
    while remaining_records:
        n = min(per_chunk, remaining_records)
        if medium is None:
            data = bytes(record * n)
        else:
            try:
                async with medium.lock:
                    access.may_read(step.source.lu if step.source else None, run.nexus)
                    data = await medium.read_records(record, n, observe)
            except CheckCondition as cc:
                reason = (
                    Reason.COPY_TARGET_DEVICE_DATA_OVERRUN
                    if cc.ili and (cc.information or 0) < 0
                    else Reason.COPY_TARGET_DEVICE_DATA_UNDERRUN
                )
                aborted = run.aborted(current, reason, cc)
                aborted.from_destination = False
                raise aborted from None
        remaining_records -= n
        useful = data[: max(0, step.length - pos)]  # padding past the block range is dropped
        if useful and dst is not None:
            assert isinstance(dst, BlockDevice)
            access.may_write(dst, run.nexus)
            await _write_or_punch(dst, step.destination_offset + pos, memoryview(useful))
        pos += len(useful)
        current.done += len(useful)
        progress.bytes_done += len(useful)


async def _write_or_punch(dst: BlockDevice, offset: int, data: memoryview) -> None:
    """All-zero allocation units become holes; the rest is written."""
    if len(data) >= ALLOCATION_UNIT and offset % ALLOCATION_UNIT == 0 and data == bytes(len(data)):
        await dst.deallocate(offset, len(data), punch=True)
        return
    await dst.write_bytes(offset, data, False)


async def _inline_to_stream(run: CopyRun, current: _Segment) -> None:
    step = current.step
    if step.destination.lu is None:
        return
    medium = _medium(step, write=True)
    if not step.records:
        return
    data = step.inline + bytes(step.pad)
    observe = run.observer(step.destination.lu)
    digest = run.digest(step.destination.lu)
    if digest is not None:
        digest.records += step.records
    async with medium.lock:
        access.may_write(step.destination.lu, run.nexus)
        await medium.begin_write()
        await medium.append_records(memoryview(data), step.record_length, observe)
    current.done = step.length
    run.progress.bytes_done += step.length


async def _tape_command(run: CopyRun, current: _Segment, cdb: bytes) -> None:
    """A tape operation runs the tape LU's own SSC handler (not over iSCSI): the same
    positioning semantics and sense as the command would have, minus unit attentions."""
    tape = current.step.destination.lu
    if tape is None:
        return
    assert isinstance(tape, LogicalUnit)
    if tape.table.lookup(cdb) is None:  # a file sink cannot SPACE or LOCATE
        raise CheckCondition(Reason.INVALID_OPCODE)
    await access.command(tape, run.nexus, cdb)


async def _write_filemarks(run: CopyRun, current: _Segment) -> None:
    count = current.step.segment.count
    await _tape_command(run, current, bytes([0x10, 0]) + count.to_bytes(3, "big") + b"\0")


async def _space(run: CopyRun, current: _Segment) -> None:
    seg = current.step.segment
    count = seg.count.to_bytes(3, "big", signed=True)
    await _tape_command(run, current, bytes([0x11, seg.space_code]) + count + b"\0")


async def _locate(run: CopyRun, current: _Segment) -> None:
    target = current.step.segment.locate_to.to_bytes(4, "big")
    await _tape_command(run, current, bytes([0x2B, 0, 0]) + target + bytes([0, 0, 0]))


async def _split_pair(run: CopyRun, current: _Segment) -> None:
    """Split the pair of the destination CSCD's volume (split-and-backup). A pair that
    is split already keeps its split instant."""
    lu = current.step.destination.lu
    assert isinstance(lu, BlockDevice)
    await split_for_copy(lu, run.nexus)


async def _start_digest(run: CopyRun, current: _Segment) -> None:
    """From here on, what this nexus's copies stream to or from the LU is hashed."""
    lu = current.step.destination.lu
    if lu is not None:
        run.digests.start(run.nexus.initiator_port, lu)
        run.digest(lu)


def _open_digest(run: CopyRun, current: _Segment, lu: LogicalUnit) -> StreamDigest:
    digest = run.digests.take(run.nexus.initiator_port, lu)
    if digest is None:
        raise run.aborted(
            current,
            Reason.COPY_NO_DIGEST,
            message="no START DIGEST for this stream, or a copy that fed it failed",
        )
    return digest


async def _write_label(run: CopyRun, current: _Segment) -> None:
    """The end label: the digest of everything hashed since START DIGEST, written as one
    record once the digest has caught up with the last byte."""
    step = current.step
    lu = step.destination.lu
    if lu is None:
        return
    digest = _open_digest(run, current, lu)
    result = await digest.result()
    label = labels.EndLabel(
        id=step.inline.decode("ascii"),
        sha256=result.sha256,
        length=result.bytes,
        records=result.records,
        sealed=labels.utc_now(),
    )
    medium = _medium(step, write=True)
    async with medium.lock:
        access.may_write(lu, run.nexus)
        await medium.begin_write()
        await medium.append_records(memoryview(label.encode()), labels.SIZE)


async def _check_label(run: CopyRun, current: _Segment) -> None:
    """The next record must be an end label whose digest and length equal what was
    hashed since START DIGEST (the data read back, not what any label claims)."""
    step = current.step
    lu = step.destination.lu
    if lu is None:
        return
    digest = _open_digest(run, current, lu)
    result = await digest.result()
    medium = _medium(step, write=True)
    try:
        async with medium.lock:
            access.may_read(lu, run.nexus)
            record = await medium.read_records(labels.SIZE, 1)
    except CheckCondition as cc:  # a file mark, end of data, a data record: no label
        aborted = run.aborted(current, Reason.COPY_NO_END_LABEL, cc)
        raise aborted from None
    found = labels.decode(record)
    if found is None or not found.complete:
        raise run.aborted(current, Reason.COPY_NO_END_LABEL, message="no end label")
    if (found.sha256, found.length) != (result.sha256, result.bytes):
        raise run.aborted(
            current,
            Reason.COPY_LABEL_MISCOMPARE,
            message=f"read back {result.bytes} bytes, sha256 {result.sha256}; the label "
            f"says {found.length} bytes, sha256 {found.sha256}",
        )


_HANDLERS: dict[int, Callable[[CopyRun, _Segment], Awaitable[None]]] = {
    BLOCK_TO_BLOCK: _block_to_block,
    BYTES_BLOCK_TO_BLOCK: _block_to_block,
    BLOCK_TO_STREAM: _block_to_stream,
    STREAM_TO_BLOCK: _stream_to_block,
    INLINE_TO_STREAM: _inline_to_stream,
    WRITE_FILEMARKS: _write_filemarks,
    SPACE: _space,
    LOCATE: _locate,
    SPLIT_PAIR: _split_pair,
    START_DIGEST: _start_digest,
    WRITE_LABEL: _write_label,
    CHECK_LABEL: _check_label,
}
