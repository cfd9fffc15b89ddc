"""The pair engine against a model: random concurrent writes, a split with a backlog,
more writes on both sides; the target equals the split-instant image; resync; equal."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backing.pairs import (
    ErrorCode,
    PairError,
    PairManager,
    PairSettings,
    PairVolume,
    Phase,
    VolumeState,
    VolumeWriteProtected,
)
from backing.sparse_file import Extent

KiB = 1 << 10
SIZE = 2 << 20
CHUNK = 64 * KiB


class MemoryStore:
    """A store whose I/O yields to the loop in the middle, so writes and copies really
    interleave (a write lands in two halves)."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.data = bytearray(size)
        self.rng = rng
        self.flushes = 0
        # While set and not yet released, writes wait: a test holds the background copy.
        self.gate: asyncio.Event | None = None

    @classmethod
    def holding(cls, data: bytes, rng: random.Random) -> MemoryStore:
        store = cls(len(data), rng)
        store.data[:] = data
        return store

    async def _yield(self) -> None:
        for _ in range(self.rng.randrange(3)):
            await asyncio.sleep(0)

    async def read_into(self, offset: int, buf: memoryview) -> None:
        half = len(buf) // 2
        buf[:half] = self.data[offset : offset + half]
        await self._yield()
        buf[half:] = self.data[offset + half : offset + len(buf)]

    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        data = bytes(data)
        half = len(data) // 2
        if self.gate is not None:
            await self.gate.wait()
        await self._yield()
        self.data[offset : offset + half] = data[:half]
        await self._yield()
        self.data[offset + half : offset + len(data)] = data[half:]

    async def flush(self) -> None:
        self.flushes += 1

    async def punch_hole(self, offset: int, length: int) -> None:
        await self.write(offset, bytes(length))

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self.write(offset, bytes(length))

    def extents(self, offset: int, length: int) -> list[Extent]:
        return [Extent(offset, length, any(self.data[offset : offset + length]))]


def make(tmp_path: Path, seed: int, **kw: int) -> tuple[PairManager, PairVolume, PairVolume]:
    rng = random.Random(seed)
    manager = PairManager(tmp_path, PairSettings(chunk_size=CHUNK, lazy_commit=0.01, **kw))
    src = PairVolume("t/lun0", MemoryStore(SIZE, rng))
    tgt = PairVolume("t/lun1", MemoryStore(SIZE, rng))
    manager.register_volume(src)
    manager.register_volume(tgt)
    return manager, src, tgt


def data_of(volume: PairVolume) -> bytes:
    return bytes(volume.base.data)  # type: ignore[attr-defined]


Write = tuple[int, int, int]  # offset, length, fill byte
writes = st.lists(
    st.tuples(
        st.integers(0, SIZE // 512 - 1).map(lambda b: b * 512),
        st.integers(1, 300).map(lambda b: b * 512),
        st.integers(1, 255),
    ),
    max_size=25,
)


async def apply(volume: PairVolume, model: bytearray, batch: list[Write]) -> None:
    """Run a batch of writes concurrently, except that a write overlapping one still
    running waits for the running ones (so the model's order is the volume's)."""
    running: list[tuple[int, int]] = []
    jobs: list[asyncio.Future[None]] = []
    for offset, length, fill in batch:
        length = min(length, SIZE - offset)
        payload = bytes([fill]) * length
        model[offset : offset + length] = payload
        if any(o < offset + length and offset < o + n for o, n in running):
            await asyncio.gather(*jobs)
            running, jobs = [], []
        running.append((offset, length))
        jobs.append(asyncio.ensure_future(volume.write(offset, payload)))
    await asyncio.gather(*jobs)


async def scenario(
    tmp_path: Path,
    seed: int,
    before: list[Write],
    during: list[Write],
    after_src: list[Write],
    after_tgt: list[Write],
) -> None:
    manager, src, tgt = make(tmp_path, seed, copy_rate=4 << 20)
    model = bytearray(SIZE)
    await apply(src, model, before)
    await manager.create("p", "t/lun0", "t/lun1")
    await apply(src, model, during)
    # Whether a backlog is left at the split depends on how fast the copy ran meanwhile;
    # the model must hold either way (test_split_is_answered_at_once_with_a_backlog makes
    # sure of a backlog).
    split_image = bytearray(model)
    await manager.split("p")
    status = manager.status("p")
    assert (status.phase.source, status.phase.target) in (
        (VolumeState.SPLIT, VolumeState.SPLIT_PENDING),
        (VolumeState.SPLIT, VolumeState.SPLIT),
    )
    await asyncio.gather(apply(src, model, after_src), apply(tgt, split_image, after_tgt))
    # A host reading the target mid-way already sees the split image.
    buf = bytearray(SIZE)
    await tgt.read_into(0, memoryview(buf))
    assert buf == split_image
    assert await manager.get("p").read_split_image(0, SIZE) == split_image
    await manager.wait("p", VolumeState.SPLIT, timeout=30)
    assert data_of(tgt) == split_image
    assert data_of(src) == model
    await manager.resync("p")
    await manager.wait("p", VolumeState.DUPLEX, timeout=30)
    assert data_of(tgt) == model
    await manager.delete("p")
    assert src.pair is None and tgt.pair is None
    await manager.stop()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    before=writes,
    during=writes,
    after_src=writes,
    after_tgt=writes,
)
def test_split_image_and_resync_match_the_model(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    before: list[Write],
    during: list[Write],
    after_src: list[Write],
    after_tgt: list[Write],
) -> None:
    tmp = tmp_path_factory.mktemp("pair")
    asyncio.run(scenario(tmp, seed, before, during, after_src, after_tgt))


def test_split_is_answered_at_once_with_a_backlog(tmp_path: Path) -> None:
    async def go() -> None:
        # The target's writes are held until the split is answered, so the backlog is still
        # there however slowly a loaded machine writes the split's durable header; after
        # that, 4 chunks a second leave copy-before-write the work.
        manager, src, tgt = make(tmp_path, 1, copy_rate=1 << 18)
        await manager.create("p", "t/lun0", "t/lun1")
        gate = tgt.base.gate = asyncio.Event()  # type: ignore[attr-defined]
        await src.write(0, b"\x07" * SIZE)
        backlog = manager.status("p").dirty_chunks
        assert backlog == SIZE // CHUNK
        await asyncio.wait_for(manager.split("p"), timeout=5)
        status = manager.status("p")
        assert status.phase is Phase.SPLIT_PENDING
        assert status.dirty_chunks >= backlog - 1
        gate.set()
        # Copy-before-write: overwrite everything on the source at once.
        await src.write(0, b"\x09" * SIZE)
        assert manager.status("p").dirty_chunks == 0  # every chunk was moved first
        await manager.wait("p", VolumeState.SPLIT, timeout=5)
        assert data_of(tgt) == b"\x07" * SIZE
        assert manager.status("p").changed_chunks == SIZE // CHUNK
        await manager.stop()

    asyncio.run(go())


def test_target_is_write_protected_while_mirroring(tmp_path: Path) -> None:
    async def go() -> None:
        manager, src, tgt = make(tmp_path, 2)
        seen: list[bool] = []
        tgt.on_change = lambda: seen.append(tgt.write_protected)
        await manager.create("p", "t/lun0", "t/lun1")
        assert tgt.write_protected and not src.write_protected
        with pytest.raises(VolumeWriteProtected):
            await tgt.write(0, b"x" * 512)
        await manager.split("p")
        assert not tgt.write_protected
        await tgt.write(0, b"x" * 512)
        await manager.resync("p")
        assert tgt.write_protected
        assert seen[0] is True and False in seen
        await manager.stop()

    asyncio.run(go())


def test_refusals_carry_their_codes(tmp_path: Path) -> None:
    async def go() -> None:
        manager, _src, _tgt = make(tmp_path, 3)
        other = PairVolume("t/lun2", MemoryStore(SIZE // 2, random.Random(0)))
        third = PairVolume("t/lun3", MemoryStore(SIZE, random.Random(0)))
        manager.register_volume(other)
        manager.register_volume(third)

        async def code(coro: object) -> ErrorCode:
            with pytest.raises(PairError) as err:
                await coro  # type: ignore[misc]
            return err.value.code

        assert await code(manager.split("nope")) is ErrorCode.UNKNOWN_PAIR
        assert await code(manager.create("p", "t/lun0", "t/lun2")) is ErrorCode.SIZE_MISMATCH
        assert await code(manager.create("p", "t/lun0", "t/lun0")) is ErrorCode.SAME_VOLUME
        assert await code(manager.create("p", "t/lun0", "t/lun9")) is ErrorCode.UNKNOWN_VOLUME
        assert await code(manager.create("bad name", "t/lun0", "t/lun1")) is ErrorCode.BAD_NAME
        await manager.create("p", "t/lun0", "t/lun1")
        assert await code(manager.create("q", "t/lun3", "t/lun1")) is ErrorCode.VOLUME_IN_PAIR
        assert await code(manager.create("p", "t/lun3", "t/lun2")) is ErrorCode.NAME_IN_USE
        assert await code(manager.resync("p")) is ErrorCode.WRONG_STATE
        await manager.split("p")
        assert await code(manager.split("p")) is ErrorCode.WRONG_STATE
        await manager.stop()

    asyncio.run(go())


def test_reflect_range_puts_the_split_image_on_the_target_first(tmp_path: Path) -> None:
    async def go() -> None:
        manager, src, tgt = make(tmp_path, 4, copy_rate=64 * KiB)
        await manager.create("p", "t/lun0", "t/lun1")
        await src.write(0, b"\x05" * SIZE)
        await manager.split("p")
        pair = manager.get("p")
        await src.write(3 * CHUNK, b"\x06" * CHUNK)  # copy-before-write of chunk 3
        await pair.reflect_range(CHUNK, 4 * CHUNK)
        assert all(c not in pair.copy_set for c in range(1, 5))
        assert data_of(tgt)[CHUNK : 5 * CHUNK] == b"\x05" * (4 * CHUNK)
        assert pair.copy_set.count > 0  # the rest is still pending
        await manager.stop()

    asyncio.run(go())


class GatedStore(MemoryStore):
    """A :class:`MemoryStore` whose writes wait at a gate while it is closed."""

    def __init__(self, size: int, rng: random.Random) -> None:
        super().__init__(size, rng)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        if not self.gate.is_set():
            self.waiting += 1
            await self.gate.wait()
        self.data[offset : offset + len(data)] = bytes(data)


async def gated_duplex(
    tmp_path: Path, copy_workers: int
) -> tuple[PairManager, PairVolume, PairVolume, GatedStore]:
    """Pair "p" of t/lun0 onto t/lun1, DUPLEX; the target's writes wait while its store's
    gate is closed."""
    manager = PairManager(tmp_path, PairSettings(chunk_size=CHUNK, copy_workers=copy_workers))
    src = PairVolume("t/lun0", MemoryStore(SIZE, random.Random(1)))
    store = GatedStore(SIZE, random.Random(2))
    tgt = PairVolume("t/lun1", store)
    manager.register_volume(src)
    manager.register_volume(tgt)
    await manager.create("p", "t/lun0", "t/lun1")
    await manager.wait("p", VolumeState.DUPLEX, timeout=5)
    return manager, src, tgt, store


def test_a_split_whose_last_chunk_a_host_write_copies_still_ends_split(tmp_path: Path) -> None:
    """The copy worker looks for work while a host write's copy-before-write holds the
    last chunk of the split set; once that copy clears it, the worker must look again
    (before, it slept until some other event and the pair stayed SPLIT-PENDING)."""

    async def go() -> None:
        manager, src, tgt, store = await gated_duplex(tmp_path, copy_workers=1)
        store.gate.clear()
        await src.write(0, b"\x01" * (2 * CHUNK))  # chunks 0 and 1 to copy
        await manager.split("p")
        while store.waiting < 1:  # the worker holds chunk 0, its write at the gate
            await asyncio.sleep(0)
        host = asyncio.ensure_future(src.write(CHUNK, b"\x02" * 512))  # cow of chunk 1
        while store.waiting < 2:
            await asyncio.sleep(0)
        store.gate.set()
        await host
        await manager.wait("p", VolumeState.SPLIT, timeout=5)
        assert data_of(tgt)[: 2 * CHUNK] == b"\x01" * (2 * CHUNK)
        await manager.stop()

    asyncio.run(go())


def test_two_copy_workers_never_take_the_same_chunk(tmp_path: Path) -> None:
    """A resync wakes both copy workers at once with one chunk to copy: one copies it, and
    the other does not start a second copy of it that waits for the first (it finds
    nothing else and sleeps). The copy is exact."""

    async def go() -> tuple[int, int]:
        manager, src, tgt, store = await gated_duplex(tmp_path, copy_workers=2)
        await manager.split("p")
        await manager.wait("p", VolumeState.SPLIT, timeout=5)
        await src.write(5 * CHUNK, b"\x07" * CHUNK)  # the one chunk the resync copies
        pair = manager.get("p")
        store.gate.clear()
        await manager.resync("p")
        while store.waiting < 1:  # a worker's copy of chunk 5 holds at the gate
            await asyncio.sleep(0)
        for _ in range(20):  # the other worker has had every chance to start one too
            await asyncio.sleep(0)
        copies = len(pair._jobs)
        store.gate.set()
        await manager.wait("p", VolumeState.DUPLEX, timeout=5)
        equal = data_of(tgt) == data_of(src)
        await manager.stop()
        return copies, int(equal)

    copies, equal = asyncio.run(go())
    assert copies == 1
    assert equal
