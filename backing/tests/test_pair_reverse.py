"""Reverse resync against a model: after a split and writes on both sides, the source is
restored from the target (copying only the chunks either side changed), reads the restored
image from the first moment, refuses host writes until DUPLEX, then mirrors again."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from test_pair_engine import CHUNK, SIZE, apply, data_of, make

from backing.pairs import (
    UNCHECKED,
    ErrorCode,
    PairError,
    PairService,
    Phase,
    VolumeState,
    VolumeWriteProtected,
)
from backing.pairs.states import SuspendReason


def batch(rng: random.Random, n: int) -> list[tuple[int, int, int]]:
    out = []
    for _ in range(n):
        offset = rng.randrange(SIZE // 512) * 512
        out.append((offset, rng.randrange(1, 300) * 512, rng.randrange(1, 256)))
    return out


async def reverse_run(tmp: Path, seed: int) -> None:
    rng = random.Random(seed)
    manager, src, tgt = make(tmp, seed, copy_rate=1 << 20)
    service = PairService(manager)
    model = bytearray(SIZE)
    await apply(src, model, batch(rng, 20))
    await service.create("p", "t/lun0", "t/lun1", access=UNCHECKED)
    pacer = manager.get("p")._pacer
    pacer.rate = 0  # the creation copy at full speed; the reverse copy paced below
    await apply(src, model, batch(rng, 10))
    await manager.wait("p", VolumeState.DUPLEX, timeout=30)
    await service.split(name="p", access=UNCHECKED)
    await manager.wait("p", VolumeState.SPLIT, timeout=30)
    mirror = bytearray(model)  # the target: the split image, then its own writes
    await asyncio.gather(apply(src, model, batch(rng, 15)), apply(tgt, mirror, batch(rng, 15)))
    changed = manager.status("p").changed_chunks
    pacer.rate = 1 << 20
    status = await service.reverse_resync(name="p", access=UNCHECKED)
    assert status.phase in (Phase.REVERSE_COPY, Phase.DUPLEX)
    assert status.dirty_chunks <= changed  # only what either side changed is copied
    if changed > 20:  # more than the pacer's one-second burst (16 chunks): still copying
        assert status.phase is Phase.REVERSE_COPY
    if status.phase is Phase.REVERSE_COPY:
        # Fenced: host writes to either volume are refused; reads of the source already
        # give the restored image.
        with pytest.raises(VolumeWriteProtected):
            await src.write(0, b"\x01" * 512)
        with pytest.raises(VolumeWriteProtected):
            await tgt.write(0, b"\x01" * 512)
        assert src.write_protected and tgt.write_protected
        buf = bytearray(SIZE)
        await src.read_into(0, memoryview(buf))
        assert buf == mirror
    await manager.wait("p", VolumeState.DUPLEX, timeout=30)
    assert data_of(src) == mirror and data_of(tgt) == mirror
    # Mirroring again: a write to the source reaches the target.
    await apply(src, mirror, batch(rng, 5))
    for _ in range(3000):  # DUPLEX all along: wait for the update copies
        if not manager.status("p").dirty_chunks:
            break
        await asyncio.sleep(0.01)
    assert data_of(tgt) == mirror
    await manager.stop()


@pytest.mark.parametrize("seed", range(6))
def test_reverse_resync_restores_the_source_from_the_target(tmp_path: Path, seed: int) -> None:
    asyncio.run(reverse_run(tmp_path, seed))


@pytest.mark.slow
def test_reverse_resync_many_seeds(tmp_path_factory: pytest.TempPathFactory) -> None:
    for seed in range(100, 200):
        asyncio.run(reverse_run(tmp_path_factory.mktemp("r"), seed))


def test_reverse_resync_only_from_split(tmp_path: Path) -> None:
    async def go() -> None:
        manager, src, _tgt = make(tmp_path, 1, copy_rate=64 << 10)
        service = PairService(manager)
        await src.write(0, b"\x07" * SIZE)
        await service.create("p", "t/lun0", "t/lun1", access=UNCHECKED)
        for phase_maker in (None, "split-pending", "suspended"):
            if phase_maker == "split-pending":
                await service.split(name="p", access=UNCHECKED)
                assert manager.status("p").phase is Phase.SPLIT_PENDING
            elif phase_maker == "suspended":
                await manager.get("p").suspend(SuspendReason.OPERATOR)
            before = manager.status("p")
            with pytest.raises(PairError) as err:
                await service.reverse_resync(name="p", access=UNCHECKED)
            assert err.value.code is ErrorCode.WRONG_STATE
            after = manager.status("p")
            assert (after.phase, after.dirty_chunks) == (before.phase, before.dirty_chunks)
        await manager.stop()

    asyncio.run(go())


def test_reverse_resync_copies_only_changed_chunks(tmp_path: Path) -> None:
    async def go() -> None:
        manager, src, tgt = make(tmp_path, 2, copy_rate=0)
        service = PairService(manager)
        await src.write(0, b"\x05" * SIZE)
        await service.create("p", "t/lun0", "t/lun1", access=UNCHECKED)
        await manager.wait("p", VolumeState.DUPLEX, timeout=30)
        await service.split(name="p", access=UNCHECKED)
        await manager.wait("p", VolumeState.SPLIT, timeout=30)
        await src.write(0, b"\x09" * 4096)  # chunk 0 on the source
        await tgt.write(3 * CHUNK, b"\x0a" * 4096)  # chunk 3 on the target
        copied = manager.get("p").copied_bytes
        await service.reverse_resync(name="p", access=UNCHECKED)
        await manager.wait("p", VolumeState.DUPLEX, timeout=30)
        assert manager.get("p").copied_bytes - copied == 2 * CHUNK
        expected = bytearray(b"\x05" * SIZE)
        expected[3 * CHUNK : 3 * CHUNK + 4096] = b"\x0a" * 4096
        assert data_of(src) == expected == data_of(tgt)
        await manager.stop()

    asyncio.run(go())


def test_a_reverse_resync_cut_by_a_crash_finishes_after_the_restart(tmp_path: Path) -> None:
    from test_pair_persistence import SIZE as FILE_SIZE
    from test_pair_persistence import boot, crash

    async def first() -> bytes:
        manager, src, tgt = boot(tmp_path, rate=256 << 10)
        await src.write(0, b"\x01" * FILE_SIZE)
        await manager.create("p", "t/lun0", "t/lun1")
        manager.get("p")._pacer.rate = 0
        await manager.wait("p", VolumeState.DUPLEX, timeout=60)
        await manager.split("p")
        await manager.wait("p", VolumeState.SPLIT, timeout=60)
        await src.write(0, b"\x02" * FILE_SIZE)  # every chunk changed on the source
        await tgt.write(0, b"\x03" * 4096)
        manager.get("p")._pacer.rate = 256 << 10
        await PairService(manager).reverse_resync(name="p", access=UNCHECKED)
        await asyncio.sleep(0.2)
        assert manager.status("p").phase is Phase.REVERSE_COPY  # some chunks restored
        await crash(manager, src, tgt)
        return b"\x03" * 4096 + b"\x01" * (FILE_SIZE - 4096)

    async def second(image: bytes) -> None:
        manager, src, _tgt = boot(tmp_path)
        await manager.start()
        assert manager.status("p").phase is Phase.REVERSE_COPY
        buf = bytearray(FILE_SIZE)
        await src.read_into(0, memoryview(buf))
        assert buf == image  # the source reads restored at once, before the copy ends
        await manager.wait("p", VolumeState.DUPLEX, timeout=60)
        await src.read_into(0, memoryview(buf))
        assert buf == image
        await manager.stop()

    image = asyncio.run(first())
    asyncio.run(second(image))
