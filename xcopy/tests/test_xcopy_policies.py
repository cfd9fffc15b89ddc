"""Backups of a split pair's target volume against a model: random host writes, a split
with a large backlog, more host writes while the backup runs; the tape (or a block copy)
equals the source at the split instant byte for byte, under every policy, many seeds."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from helpers_xcopy import NEXUS, cscd, extended_copy, manager_of
from xcopy_lists import lid1, lid4, seg_b2b, seg_b2s

import xcopy
from backing.pairs import PairManager, PairService, PairSettings, PairVolume, Phase
from backing.sparse_file import SparseFile
from scsi.block_device import BlockDevice
from scsi.logical_unit import Identity, LogicalUnit
from scsi.sense import parse_sense
from scsi.tape_device import TapeDevice
from scsi.target import ScsiTarget
from xcopy.policies import Policy

KiB, MiB = 1 << 10, 1 << 20
SIZE = 2 * MiB
BLOCKS = SIZE // 512
RECORD = 128 * KiB


class Control:
    """The target's view of its pairs (``scsi.pair_commands.PairControl``): LUNs 0 and 1
    are volumes ``t/lun0`` and ``t/lun1``."""

    def __init__(self, service: PairService) -> None:
        self.service = service

    def volume_of(self, lun: int) -> str | None:
        return f"t/lun{lun}" if lun in (0, 1) else None

    def lun_of(self, volume_id: str) -> int | None:
        return {"t/lun0": 0, "t/lun1": 1}.get(volume_id)


class HeldFile(SparseFile):
    """A sparse file whose writes wait for ``opened``: as a pair's target volume, it holds
    the background copy back (host writes reach only the source while mirroring)."""

    opened: asyncio.Event

    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        await self.opened.wait()
        await super().write(offset, data, fua=fua)

    async def punch_hole(self, offset: int, length: int) -> None:
        await self.opened.wait()
        await super().punch_hole(offset, length)


async def build(
    tmp: Path, policy: Policy, *, copies: asyncio.Event | None = None
) -> tuple[ScsiTarget, PairManager]:
    """``copies``: the target volume's writes wait until it is set (none: no waiting)."""
    manager = PairManager(
        tmp / "state", PairSettings(chunk_size=64 * KiB, copy_rate=2 * MiB, lazy_commit=0.01)
    )
    control = Control(PairService(manager))
    luns: dict[int, LogicalUnit] = {}
    services = xcopy.services(lambda pair: policy)
    for n in (0, 1):
        if n == 1 and copies is not None:
            held = HeldFile(tmp / f"v{n}.img", SIZE)
            held.opened = copies
            volume = PairVolume(f"t/lun{n}", held)
        else:
            volume = PairVolume(f"t/lun{n}", SparseFile(tmp / f"v{n}.img", SIZE))
        manager.register_volume(volume)
        lu = BlockDevice(Identity(f"t/lun{n}"), volume, services=services, pair_control=control)

        def follow(lu: BlockDevice = lu, volume: PairVolume = volume) -> None:
            lu.read_only = volume.write_protected

        volume.on_change = follow
        luns[n] = lu
    luns[2] = TapeDevice.from_file(
        Identity("t/lun2"), tmp / "tape.img", 64 * MiB, services=services
    )
    luns[3] = BlockDevice.from_file(Identity("t/lun3"), tmp / "copy.img", SIZE, services=services)
    target = ScsiTarget(luns)
    target.nexus_established(NEXUS)
    for lu in luns.values():
        lu.pop_unit_attention(NEXUS)
    await manager.start()
    return target, manager


async def host_writes(lu: BlockDevice, model: bytearray | None, rng: random.Random, n: int):  # type: ignore[no-untyped-def]
    for _ in range(n):
        blocks = rng.randrange(1, 200)
        lba = rng.randrange(0, BLOCKS - blocks)
        data = bytes([rng.randrange(1, 256)]) * (blocks * 512)
        if rng.random() < 0.2:
            data = bytes(len(data))  # zeros too, so holes and data both move
        await lu.write_bytes(lba * 512, data, False)
        if model is not None:
            model[lba * 512 : lba * 512 + len(data)] = data
        await asyncio.sleep(0)


def backup_list(target: ScsiTarget, *, split: int | None = None) -> bytes:
    segments = [
        seg_b2s(0, 1, RECORD, RECORD // 512, lba) for lba in range(0, BLOCKS, RECORD // 512)
    ]
    if split is None:
        return lid1(
            [cscd(target.luns[1]), cscd(target.luns[2], device_type=1, block_length=0)], segments
        )
    split_segment = bytes([0xC0, 0, 0, 0x08, 0, 0, 0, 0, split, 0, 0, 0])
    return lid4(
        [cscd(target.luns[1]), cscd(target.luns[2], device_type=1, block_length=0)],
        [split_segment, *segments],
        list_id=9,
        immed=True,
    )


def tape_bytes(tape: TapeDevice) -> bytes:
    return b"".join(tape.image.read(i) for i in range(len(tape.image)))


async def scenario(tmp: Path, seed: int, policy: Policy, split_and_backup: bool) -> None:
    rng = random.Random(seed)
    # From the pair's creation (which prepares the target volume) until the split is
    # taken, the background copy waits: the split has a large backlog however slowly the
    # host writes before it run (a loaded machine).
    copies = asyncio.Event()
    copies.set()
    target, manager = await build(tmp, policy, copies=copies)
    source, backup_source = target.luns[0], target.luns[1]
    assert isinstance(source, BlockDevice) and isinstance(backup_source, BlockDevice)
    try:
        await manager.create("p", "t/lun0", "t/lun1")
        copies.clear()
        model = bytearray(SIZE)
        await host_writes(source, model, rng, 60)
        # Mirroring: the target volume has no split image; a backup of it is refused.
        r = await extended_copy(target, backup_list(target))
        assert parse_sense(r.sense) == (0x0A, 0x80, 0x02)
        split_image = bytes(model)
        if split_and_backup:
            r = await extended_copy(target, backup_list(target, split=int(policy)), sa=1)
            assert (r.status, r.sense) == (0, None)  # answered once the split is taken
        else:
            await manager.split("p")
        pair = manager.get("p")
        assert pair.phase is Phase.SPLIT_PENDING and pair.status().dirty_chunks > 8
        copies.set()
        if split_and_backup:
            writes = asyncio.create_task(host_writes(source, None, rng, 60))
            op = manager_of(target).find(NEXUS, 9)
            await asyncio.wait_for(op.done.wait(), 30)
            await writes
            assert op.sense is None, parse_sense(op.sense)
        else:
            r, _ = await asyncio.gather(
                extended_copy(target, backup_list(target)), host_writes(source, None, rng, 60)
            )
            assert (r.status, r.sense) == (0, None)
        assert tape_bytes(target.luns[2]) == split_image
        # A sparse-aware block copy of the same volume: pending chunks are data, not holes.
        copy = lid1(
            [cscd(backup_source), cscd(target.luns[3])], [seg_b2b(0, 1, BLOCKS, 0, 0)], list_id=2
        )
        r = await extended_copy(target, copy)
        assert (r.status, r.sense) == (0, None)
        buf = bytearray(SIZE)
        await target.luns[3].store.read_into(0, memoryview(buf))
        assert bytes(buf) == split_image
    finally:
        copies.set()
        await manager.stop()
        for lu in target.luns.values():
            close = getattr(lu, "close", None)
            if close is not None:
                close()


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("policy", [Policy.REFLECT_FIRST, Policy.MERGE, Policy.WAIT])
def test_backup_equals_the_split_instant(tmp_path: Path, policy: Policy, seed: int) -> None:
    asyncio.run(scenario(tmp_path, seed, policy, split_and_backup=False))


@pytest.mark.parametrize("seed", [4, 5])
@pytest.mark.parametrize("policy", [Policy.REFLECT_FIRST, Policy.MERGE])
def test_split_and_backup_in_one_command(tmp_path: Path, policy: Policy, seed: int) -> None:
    asyncio.run(scenario(tmp_path, seed, policy, split_and_backup=True))


def test_resync_during_a_backup_aborts_it(tmp_path: Path) -> None:
    async def main() -> None:
        # WAIT holds the copy until the pair is SPLIT; a resync comes first instead.
        target, manager = await build(tmp_path, Policy.WAIT)
        try:
            await manager.create("p", "t/lun0", "t/lun1")
            await host_writes(target.luns[0], None, random.Random(9), 40)
            await manager.split("p")
            task = asyncio.create_task(extended_copy(target, backup_list(target)))
            await asyncio.sleep(0.05)
            assert not task.done()
            await manager.resync("p")
            r = await task
            assert parse_sense(r.sense) == (0x0A, 0x80, 0x10)
        finally:
            await manager.stop()

    asyncio.run(main())


@pytest.mark.parametrize("via_segment", [True, False], ids=["split-pair-segment", "policy-4"])
def test_a_split_for_a_backup_honours_reservations(tmp_path: Path, via_segment: bool) -> None:
    """A copy's split goes through the pair service with the copy's nexus: the split
    writes the target volume, so another initiator's reservation of it refuses the
    split (COPY ABORTED, RESERVATION CONFLICT forwarded) and the pair keeps mirroring."""
    from helpers_xcopy import OTHER

    from scsi.reservations import PrType, Reservation

    async def main() -> None:
        policy = Policy.REFLECT_FIRST if via_segment else Policy.SPLIT_AND_BACKUP
        target, manager = await build(tmp_path, policy)
        try:
            await manager.create("p", "t/lun0", "t/lun1")
            pair = manager.get("p")
            await asyncio.wait_for(pair.wait_until(lambda p: p.phase is Phase.DUPLEX), 30)
            target.luns[1].reservations.reservation = Reservation(OTHER, PrType.WRITE_EXCLUSIVE)
            params = backup_list(target, split=1) if via_segment else backup_list(target)
            r = await extended_copy(target, params, sa=1 if via_segment else 0)
            sense = r.sense or b""
            assert (sense[2] & 0x0F, sense[12], sense[13]) == (0x0A, 0x00, 0x00), sense.hex()
            assert pair.phase is Phase.DUPLEX  # not split
            assert len(target.luns[2].image) == 0  # no record on the tape
        finally:
            await manager.stop()
            for lu in target.luns.values():
                lu.close()

    asyncio.run(main())
