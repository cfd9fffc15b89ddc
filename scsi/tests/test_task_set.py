"""SAM-5 task attributes on a LU's task set: an ORDERED task waits for every older task and
holds back younger SIMPLE ones, HEAD OF QUEUE goes first, and an aborted waiter lets the
tasks behind it go. A READ made slow (its backing read waits on an event) shows what ran
when: a WRITE of the same blocks that ran beside it would show in its data."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sbc_support import NEXUS, make_lu, read10, write10

from scsi.block_device import BlockDevice
from scsi.command import ScsiCommand, ScsiResult, Status, TaskAttribute

OLD = bytes(512)
NEW = b"\xab" * 512
TEST_UNIT_READY = bytes(6)


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
    return release


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


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
        await settle()
        assert ordered.cancelled()
        assert behind.done() and behind.result().status == Status.GOOD
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
