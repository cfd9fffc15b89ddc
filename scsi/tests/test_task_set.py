"""SAM-5 task attributes on a LU's task set: an ORDERED task waits for every older task and
holds back younger SIMPLE ones, HEAD OF QUEUE goes first, and an aborted waiter lets the
tasks behind it go. A READ made slow (its backing read waits on an event) shows what ran
when: a WRITE of the same blocks that ran beside it would show in its data."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sbc_support import NEXUS, make_lu, read10, write10

from backing.pairs import PairVolume
from backing.sparse_file import SparseFile
from scsi.block_device import BlockDevice
from scsi.command import FileRange, ScsiCommand, ScsiResult, Status, TaskAttribute
from scsi.logical_unit import Identity

OLD = bytes(512)
NEW = b"\xab" * 512
TEST_UNIT_READY = bytes(6)
MiB = 1 << 20
ENDS_WITHIN = 30.0  # seconds: far beyond a write on a loaded machine


def command(cdb: bytes, attribute: TaskAttribute, data: bytes | None = None) -> ScsiCommand:
    return ScsiCommand(
        cdb=cdb,
        lun=0,
        nexus=NEXUS,
        data_out=None if data is None else memoryview(bytearray(data)),
        data_in_length=0 if data is not None else 512,
        attribute=attribute,
    )


def slow_reads(lu: BlockDevice) -> asyncio.Event:
    """Make the LU's backing reads wait for the returned event before reading."""
    release = asyncio.Event()
    read_into = lu.store.read_into

    async def held(offset: int, buf: memoryview) -> None:
        await release.wait()
        await read_into(offset, buf)

    lu.store.read_into = held  # type: ignore[method-assign]
    lu.read_now = None  # no READ filled at once from the page cache: each one waits here
    return release


async def settle() -> None:
    """A few loop turns: enough for tasks that wait on nothing but each other to reach their
    wait, so a task not done after them is held back. Never used to let a task finish:
    a write may go through the executor, and a loaded machine takes any number of turns."""
    for _ in range(5):
        await asyncio.sleep(0)


async def ended(task: asyncio.Task[ScsiResult]) -> asyncio.Task[ScsiResult]:
    """``task`` once it has ended, however long its backing I/O takes (a test that waits
    for a task that never goes fails at the deadline)."""
    await asyncio.wait_for(asyncio.wait([task]), ENDS_WITHIN)
    return task


def start(lu: BlockDevice, cmd: ScsiCommand) -> asyncio.Task[ScsiResult]:
    return asyncio.ensure_future(lu.execute(cmd))


async def held_read(
    lu: BlockDevice, attribute: TaskAttribute = TaskAttribute.SIMPLE
) -> tuple[asyncio.Event, asyncio.Task[ScsiResult]]:
    """A READ of block 0, started and under way, whose backing read waits for the returned
    event: the older task the others queue behind."""
    release = slow_reads(lu)
    read = start(lu, command(read10(0, 1), attribute))
    await settle()
    return release, read


def assert_idle(lu: BlockDevice) -> None:
    assert lu.task_set.active == 0 and not lu.task_set.gated


@pytest.fixture
def lu(tmp_path: Path) -> Iterator[BlockDevice]:
    device = make_lu(tmp_path)
    yield device
    device.close()


def test_ordered_write_waits_for_an_older_read(lu: BlockDevice) -> None:

    async def main() -> None:
        release, read = await held_read(lu)
        write = start(lu, command(write10(0, 1), TaskAttribute.ORDERED, NEW))
        await settle()
        assert not write.done()  # the READ is older and still running
        release.set()
        result = await read
        assert result.status == Status.GOOD
        assert bytes(result.data or b"") == OLD  # the WRITE did not run beside it
        assert (await write).status == Status.GOOD
        assert_idle(lu)

    asyncio.run(main())


def test_simple_after_an_ordered_waits_for_it(lu: BlockDevice) -> None:

    async def main() -> None:
        release, read = await held_read(lu, TaskAttribute.ORDERED)
        write = start(lu, command(write10(0, 1), TaskAttribute.SIMPLE, NEW))
        await settle()
        assert not write.done()
        release.set()
        assert bytes((await read).data or b"") == OLD
        assert (await write).status == Status.GOOD
        check = await lu.execute(command(read10(0, 1), TaskAttribute.SIMPLE))
        assert bytes(check.data or b"") == NEW

    asyncio.run(main())


def test_simple_tasks_without_an_ordered_one_run_side_by_side(lu: BlockDevice) -> None:

    async def main() -> None:
        release, read = await held_read(lu)
        write = await lu.execute(command(write10(0, 1), TaskAttribute.SIMPLE, NEW))
        assert write.status == Status.GOOD  # QAM 1: reordered freely
        release.set()
        assert bytes((await read).data or b"") == NEW

    asyncio.run(main())


def test_head_of_queue_starts_ahead_of_a_waiting_ordered_task(lu: BlockDevice) -> None:

    async def main() -> None:
        release, read = await held_read(lu)
        ordered = start(lu, command(write10(0, 1), TaskAttribute.ORDERED, NEW))
        simple = start(lu, command(TEST_UNIT_READY, TaskAttribute.SIMPLE))
        await settle()
        assert not ordered.done() and not simple.done()
        head = await lu.execute(command(TEST_UNIT_READY, TaskAttribute.HEAD_OF_QUEUE))
        assert head.status == Status.GOOD
        assert not ordered.done() and not simple.done()
        release.set()
        await asyncio.gather(read, ordered, simple)
        assert_idle(lu)

    asyncio.run(main())


def test_aborting_a_waiting_ordered_task_lets_those_behind_it_go(lu: BlockDevice) -> None:

    async def main() -> None:
        release, read = await held_read(lu)
        ordered = start(lu, command(write10(0, 1), TaskAttribute.ORDERED, NEW))
        behind = start(lu, command(write10(1, 1), TaskAttribute.SIMPLE, NEW))
        await settle()
        assert not behind.done()
        ordered.cancel()  # ABORT TASK of the waiting ORDERED task
        assert (await ended(ordered)).cancelled()
        assert (await ended(behind)).result().status == Status.GOOD  # the READ still runs
        assert not read.done()
        release.set()
        assert bytes((await read).data or b"") == OLD  # the aborted WRITE never ran
        assert_idle(lu)

    asyncio.run(main())


def test_aborting_the_older_task_starts_the_ordered_one(lu: BlockDevice) -> None:

    async def main() -> None:
        _release, read = await held_read(lu)
        ordered = start(lu, command(write10(0, 1), TaskAttribute.ORDERED, NEW))
        await settle()
        assert not ordered.done()
        read.cancel()  # LU reset or the nexus gone: the running READ ends
        assert (await ordered).status == Status.GOOD
        assert_idle(lu)

    asyncio.run(main())


@pytest.fixture
def file_lu(tmp_path: Path) -> Iterator[tuple[BlockDevice, bytes]]:
    """A LU on a plain file with its first MiB cached: a READ of it, when the transport
    asks, answers with a FileRange (sent later with sendfile)."""
    store = SparseFile(tmp_path / "f.img", 4 * MiB)
    old = os.urandom(MiB)
    os.pwrite(store.fd, old, 0)  # through the page cache: cached
    device = BlockDevice(Identity("f"), store)
    yield device, old
    device.close()


def file_read(attribute: TaskAttribute) -> ScsiCommand:
    return ScsiCommand(
        cdb=read10(0, 2048), lun=0, nexus=NEXUS, data_in_length=MiB, attribute=attribute,
        file_data_in=True,
    )  # fmt: skip


def test_a_read_sent_from_the_file_completes_when_its_hold_is_released(
    file_lu: tuple[BlockDevice, bytes],
) -> None:
    """The READ's handler is done, but its bytes leave the file later: the ORDERED WRITE
    behind it waits until the transport releases the hold (the initiator has the data),
    and the transport is asked (once) to hurry that as soon as the WRITE waits."""
    lu, old = file_lu

    async def main() -> None:
        result = await lu.execute(file_read(TaskAttribute.SIMPLE))
        assert result.data == FileRange(lu.store, 0, MiB)
        assert result.hold is not None and lu.task_set.active == 1
        nudges: list[int] = []
        result.hold.on_wanted(lambda: nudges.append(1))
        assert nudges == []  # nobody waits: no ping
        write = start(lu, command(write10(0, 1), TaskAttribute.ORDERED, NEW))
        await settle()
        assert not write.done() and nudges == [1]
        assert os.pread(lu.store.fd, MiB, 0) == old  # what sendfile would still send
        result.hold.release()
        assert (await write).status == Status.GOOD
        result.hold.release()  # a second release (the connection closing) does nothing
        assert_idle(lu)
        simple = await lu.execute(file_read(TaskAttribute.SIMPLE))
        assert simple.hold is not None  # SIMPLE tasks do not wait for it
        assert (await lu.execute(command(write10(0, 1), TaskAttribute.SIMPLE, NEW))).status == 0
        simple.hold.release()

    asyncio.run(main())


def test_a_hold_taken_while_a_task_waits_asks_at_once(
    file_lu: tuple[BlockDevice, bytes],
) -> None:
    """An ORDERED READ answered from the file keeps younger SIMPLE tasks back until its
    hold is released; a hold made while they already wait asks its transport at once."""
    lu, _ = file_lu

    async def main() -> None:
        release = slow_reads(lu)
        first = start(lu, command(read10(4096, 1), TaskAttribute.SIMPLE))
        await settle()
        ordered = start(lu, file_read(TaskAttribute.ORDERED))
        await settle()
        younger = start(lu, command(TEST_UNIT_READY, TaskAttribute.SIMPLE))
        await settle()
        release.set()
        await first
        result = await ordered
        assert result.hold is not None and result.hold.wanted  # the TUR waits for it
        nudges: list[int] = []
        result.hold.on_wanted(lambda: nudges.append(1))
        assert nudges == [1]
        await settle()
        assert not younger.done()
        result.hold.release()
        assert (await younger).status == Status.GOOD
        assert lu.task_set.active == 0 and not lu.task_set.gated

    asyncio.run(main())


def test_reads_the_transport_sends_as_bytes_take_no_hold(
    file_lu: tuple[BlockDevice, bytes],
) -> None:
    lu, _ = file_lu
    cmd = file_read(TaskAttribute.SIMPLE)
    cmd.file_data_in = False
    result = asyncio.run(lu.execute(cmd))
    assert isinstance(result.data, bytearray) and result.hold is None
    assert lu.task_set.active == 0


def test_a_pair_volume_learns_of_its_reads_sent_from_the_file(tmp_path: Path) -> None:
    """A READ of a pair volume answered with a FileRange is known to the volume until its
    hold is released: the pair engine's write of the range (``unsent``) waits for it and asks
    the READ's transport for the acknowledgement, as an ORDERED task would."""
    store = SparseFile(tmp_path / "v.img", 4 * MiB)
    os.pwrite(store.fd, os.urandom(MiB), 0)
    lu = BlockDevice(Identity("v"), PairVolume("v", store))

    async def main() -> None:
        result = await lu.execute(file_read(TaskAttribute.SIMPLE))
        assert type(result.data) is FileRange and result.hold is not None
        nudges: list[int] = []
        result.hold.on_wanted(lambda: nudges.append(1))
        volume = lu.store
        assert isinstance(volume, PairVolume)
        await asyncio.wait_for(volume.unsent(MiB, MiB), 1)  # not the READ's range
        engine_write = asyncio.ensure_future(volume.unsent(MiB - 512, 4096))
        await settle()
        assert not engine_write.done() and nudges == [1]
        result.hold.release()
        await asyncio.wait_for(engine_write, 1)
        assert_idle(lu)

    try:
        asyncio.run(main())
    finally:
        lu.close()
