"""PairService, the one entry point: every volume an operation reads or writes is put to
the caller's access (not only the one it named), names are per scope, and a backup's
split image says what is pending and makes it reach the target."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from backing.pairs import (
    UNCHECKED,
    BackupPolicy,
    ErrorCode,
    PairError,
    PairManager,
    PairService,
    PairSettings,
    PairVolume,
    Phase,
)
from backing.sparse_file import Extent, SparseFile

CHUNK = 64 << 10
SIZE = 1 << 20


class Recorder:
    """An Access that records what it is asked and refuses writes to ``reserved``."""

    def __init__(self, reserved: str | None = None) -> None:
        self.asked: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        self.reserved = reserved

    def check(self, reads: Sequence[str], writes: Sequence[str]) -> None:
        self.asked.append((tuple(reads), tuple(writes)))
        if self.reserved in writes:
            raise PairError(ErrorCode.RESERVATION_CONFLICT, f"{self.reserved} is reserved")


def boot(tmp: Path, copy_rate: int = 0) -> PairService:
    service = PairService(PairManager(tmp, PairSettings(chunk_size=CHUNK, copy_rate=copy_rate)))
    for scope in ("a", "b"):
        for n in (0, 1):
            store = SparseFile(tmp / f"{scope}{n}.img", SIZE)
            service.register_volume(PairVolume(f"{scope}/lun{n}", store))
    return service


async def settle(service: PairService, phase: Phase, name: str = "p", scope: str = "a") -> None:
    while service.status(name=name, scope=scope).phase is not phase:
        await asyncio.sleep(0.01)


def test_every_volume_an_operation_touches_is_checked(tmp_path: Path) -> None:
    async def run() -> None:
        service = boot(tmp_path)
        await service.start()
        refuse = Recorder(reserved="a/lun1")
        with pytest.raises(PairError) as err:
            await service.create("p", "a/lun0", "a/lun1", access=refuse)
        assert err.value.code is ErrorCode.RESERVATION_CONFLICT
        assert service.list_pairs() == []
        ok = Recorder()
        await service.create("p", "a/lun0", "a/lun1", access=ok)
        await settle(service, Phase.DUPLEX)
        # Named by the source volume, a split still writes the target: refused.
        with pytest.raises(PairError):
            await service.split(access=refuse, volume="a/lun0")
        assert service.status(name="p").phase is Phase.DUPLEX
        await service.split(access=ok, volume="a/lun0")
        await service.resync(access=ok, name="p", scope="a")
        await service.delete(access=ok, name="p")
        assert ok.asked == [(("a/lun0",), ("a/lun1",))] * 3 + [((), ())]
        await service.stop()

    asyncio.run(run())


def test_names_are_per_scope(tmp_path: Path) -> None:
    async def run() -> None:
        service = boot(tmp_path)
        await service.start()
        await service.create("p", "a/lun0", "a/lun1", access=UNCHECKED)
        await service.create("p", "b/lun0", "b/lun1", access=UNCHECKED)
        with pytest.raises(PairError) as err:
            service.status(name="p")
        assert err.value.code is ErrorCode.AMBIGUOUS_NAME
        assert service.status(name="p", scope="b").source == "b/lun0"
        assert [s.source for s in service.list_pairs("a")] == ["a/lun0"]
        with pytest.raises(PairError) as err:
            await service.create("q", "a/lun0", "b/lun1", access=UNCHECKED)
        assert err.value.code is ErrorCode.UNKNOWN_VOLUME
        await service.stop()
        # Both come back from their files, each in its scope.
        service = boot(tmp_path)
        await service.start()
        assert sorted(s.source for s in service.list_pairs()) == ["a/lun0", "b/lun0"]
        await service.stop()

    asyncio.run(run())


def test_split_image_for_a_backup(tmp_path: Path) -> None:
    async def run() -> None:
        service = boot(tmp_path, copy_rate=CHUNK)  # slow: the split leaves chunks pending
        await service.start()
        source = service.manager.volumes["a/lun0"]
        await source.write(0, b"\x01" * SIZE)
        await service.create("p", "a/lun0", "a/lun1", access=UNCHECKED)
        assert service.is_pair_target("a/lun1") and not service.is_pair_target("a/lun0")
        with pytest.raises(PairError) as err:
            await service.split_image("a/lun1", BackupPolicy.REFLECT_FIRST, access=UNCHECKED)
        assert err.value.code is ErrorCode.WRONG_STATE
        refuse = Recorder(reserved="a/lun1")
        with pytest.raises(PairError):
            await service.split_image("a/lun1", BackupPolicy.SPLIT_AND_BACKUP, access=refuse)
        image = await service.split_image("a/lun1", BackupPolicy.SPLIT_AND_BACKUP, access=UNCHECKED)
        assert (image.policy, image.phase, image.intact()) == (
            BackupPolicy.REFLECT_FIRST,
            Phase.SPLIT_PENDING,
            True,
        )
        pending = image.pending(0, 4 * CHUNK)
        assert pending and not image.reflected
        await image.reflect(0, 4 * CHUNK)
        assert image.pending(0, 4 * CHUNK) == []
        target = service.manager.volumes["a/lun1"].base
        buf = bytearray(4 * CHUNK)
        await target.read_into(0, memoryview(buf))
        assert buf == b"\x01" * len(buf)
        await service.resync(access=UNCHECKED, name="p")
        assert not image.intact()
        await service.stop()

    asyncio.run(run())


def test_split_image_extents_count_pending_chunks_as_data(tmp_path: Path) -> None:
    """A pending chunk reads as data where the target still has a hole (its split-instant
    content is on the source), so a sparse-aware backup does not skip it; once reflected
    the target's own map says the same."""

    async def run() -> None:
        service = boot(tmp_path, copy_rate=CHUNK)  # slow: the split leaves chunk 2 pending
        await service.start()
        source = service.manager.volumes["a/lun0"]
        await source.write(2 * CHUNK, b"\x02" * CHUNK)
        await service.create("p", "a/lun0", "a/lun1", access=UNCHECKED)
        await service.split(access=UNCHECKED, name="p")
        image = await service.split_image("a/lun1", BackupPolicy.MERGE, access=UNCHECKED)
        assert image.pending(0, SIZE) == [2]
        target = service.manager.volumes["a/lun1"]
        assert target.extents(0, 4 * CHUNK) == [Extent(0, 4 * CHUNK, False)]
        expected = [
            Extent(0, 2 * CHUNK, False),
            Extent(2 * CHUNK, CHUNK, True),
            Extent(3 * CHUNK, CHUNK, False),
        ]
        assert image.extents(0, 4 * CHUNK) == expected
        await image.reflect(0, 4 * CHUNK)
        assert target.extents(0, 4 * CHUNK) == expected == image.extents(0, 4 * CHUNK)
        await service.stop()

    asyncio.run(run())


def test_split_keeping_the_split_instant(tmp_path: Path) -> None:
    """``keep_split`` (a SPLIT PAIR segment): a pair already split is left as it is, its
    split instant kept and no access asked; a mirroring pair is split, access asked."""

    async def run() -> None:
        service = boot(tmp_path)
        await service.start()
        await service.create("p", "a/lun0", "a/lun1", access=UNCHECKED)
        await settle(service, Phase.DUPLEX)
        first = Recorder()
        status = await service.split(access=first, name="p", keep_split=True)
        assert status.phase is Phase.SPLIT_PENDING or status.phase is Phase.SPLIT
        assert first.asked == [(("a/lun0",), ("a/lun1",))]
        instant = status.split_time
        again = Recorder(reserved="a/lun1")  # would refuse a split: none is taken
        status = await service.split(access=again, name="p", keep_split=True)
        assert (status.split_time, again.asked) == (instant, [])
        await service.stop()

    asyncio.run(run())
