"""Kernel copies (copy_file_range) from a pair's volumes: a SPLIT pair's target backed up
to tape straight from its file, aborted if the pair leaves SPLIT under the copy; and
block to block onto a paired source volume, which the pair must still see."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from helpers_xcopy import cscd, extended_copy
from test_xcopy_policies import BLOCKS, SIZE, backup_list, build, host_writes, tape_bytes
from xcopy_lists import lid1, seg_b2b

from backing.pairs import Phase
from scsi.block_device import BlockDevice
from scsi.kernel_file import KernelFile
from scsi.sense import parse_sense
from xcopy.policies import Policy
from xcopy.streams import TapeMedium


async def read_all(lu: BlockDevice) -> bytes:
    buf = bytearray(SIZE)
    await lu.store.read_into(0, memoryview(buf))
    return bytes(buf)


def spy_kernel_records(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[int]:
    """Counts (and optionally slows) the records the kernel copies into the tape."""
    calls: list[int] = []
    original = TapeMedium.append_from

    async def spy(self, source, offset, length, pace, *rest):  # type: ignore[no-untyped-def]
        calls.append(offset)
        await asyncio.sleep(delay)
        await original(self, source, offset, length, pace, *rest)

    monkeypatch.setattr(TapeMedium, "append_from", spy)
    return calls


def test_split_target_is_backed_up_by_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_kernel_records(monkeypatch)

    async def main() -> None:
        target, manager = await build(tmp_path, Policy.REFLECT_FIRST)
        try:
            await manager.create("p", "t/lun0", "t/lun1")
            source = target.luns[0]
            model = bytearray(SIZE)
            await host_writes(source, model, random.Random(3), 60)
            await manager.split("p")
            pair = manager.get("p")
            await asyncio.wait_for(pair.wait_until(lambda p: p.phase is Phase.SPLIT), 30)
            r, _ = await asyncio.gather(
                extended_copy(target, backup_list(target)),
                host_writes(source, None, random.Random(4), 40),  # the source moves on
            )
            assert (r.status, r.sense) == (0, None)
            assert tape_bytes(target.luns[2]) == bytes(model)
            assert len(calls) == BLOCKS * 512 // (128 * 1024)  # every record by the kernel
        finally:
            await manager.stop()

    asyncio.run(main())


def test_resync_under_a_kernel_backup_aborts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_kernel_records(monkeypatch, delay=0.02)

    async def main() -> None:
        target, manager = await build(tmp_path, Policy.REFLECT_FIRST)
        try:
            await manager.create("p", "t/lun0", "t/lun1")
            await host_writes(target.luns[0], None, random.Random(5), 40)
            await manager.split("p")
            pair = manager.get("p")
            await asyncio.wait_for(pair.wait_until(lambda p: p.phase is Phase.SPLIT), 30)
            task = asyncio.create_task(extended_copy(target, backup_list(target)))
            while not calls:
                await asyncio.sleep(0.001)
            await manager.resync("p")
            r = await task
            assert parse_sense(r.sense) == (0x0A, 0x80, 0x10)
        finally:
            await manager.stop()

    asyncio.run(main())


def test_block_copy_onto_a_paired_source_reaches_its_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LUN 3 (unpaired) copied block to block by the kernel onto LUN 0, the source of a
    pair: after a split, and after a resync, the pair's target holds the copied bytes."""
    kernel_copies: list[int] = []
    original = KernelFile.copy_to

    def spy(self, dst, src_offset, dst_offset, length, **kwargs):  # type: ignore[no-untyped-def]
        kernel_copies.append(length)
        original(self, dst, src_offset, dst_offset, length, **kwargs)

    monkeypatch.setattr(KernelFile, "copy_to", spy)

    async def main() -> None:
        target, manager = await build(tmp_path, Policy.REFLECT_FIRST)
        try:
            await manager.create("p", "t/lun0", "t/lun1")
            pair = manager.get("p")
            await asyncio.wait_for(pair.wait_until(lambda p: p.phase is Phase.DUPLEX), 30)
            other = target.luns[3]
            assert isinstance(other, BlockDevice)
            image = random.Random(6).randbytes(SIZE // 2)
            await other.write_bytes(0, image, False)
            copy = lid1(
                [cscd(other), cscd(target.luns[0])],
                [seg_b2b(0, 1, BLOCKS // 2, 0, BLOCKS // 4)],
                list_id=3,
            )
            r = await extended_copy(target, copy)
            assert (r.status, r.sense) == (0, None)
            expect = bytes(SIZE // 4) + image + bytes(SIZE // 4)
            assert await read_all(target.luns[0]) == expect
            assert sum(kernel_copies) == SIZE // 2  # all of it by the kernel
            await manager.split("p")
            await asyncio.wait_for(pair.wait_until(lambda p: p.phase is Phase.SPLIT), 30)
            assert await read_all(target.luns[1]) == expect
            # Copied again while SPLIT: the resync must carry the changed chunks over.
            copy = lid1([cscd(other), cscd(target.luns[0])], [seg_b2b(0, 1, 100, 7, 3)], list_id=4)
            r = await extended_copy(target, copy)
            assert (r.status, r.sense) == (0, None)
            expect = expect[:1536] + image[3584 : 3584 + 51200] + expect[1536 + 51200 :]
            assert await read_all(target.luns[0]) == expect
            assert sum(kernel_copies) == SIZE // 2 + 51200
            assert await read_all(target.luns[1]) != expect
            await manager.resync("p")
            await asyncio.wait_for(pair.wait_until(lambda p: p.phase is Phase.DUPLEX), 30)
            await manager.split("p")
            await asyncio.wait_for(pair.wait_until(lambda p: p.phase is Phase.SPLIT), 30)
            assert await read_all(target.luns[1]) == expect
        finally:
            await manager.stop()

    asyncio.run(main())
