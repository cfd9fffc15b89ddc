"""The write-intent promise with lazy clearing (md style): a chunk's bit is set *on disk* when a
host write to it runs; a copied chunk's bit stays set on disk while mirroring, so writing it
again needs no sync; held bits reach the disk cleared after aging, and at once at a split."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from backing.pairs import PairManager, PairSettings, PairVolume, Phase, VolumeState
from backing.pairs.bitmap import PAGE_BITS
from backing.pairs.engine import COPY_SET, SRC_CHANGED, Pair
from backing.sparse_file import SparseFile

KiB = 1 << 10
SIZE = 2 << 20
CHUNK = 64 * KiB


def disk_bit(pair: Pair, region: int, chunk: int) -> bool:
    """The bit as the pair file holds it (what a crash leaves)."""
    page, i = divmod(chunk, PAGE_BITS)
    fd = os.open(pair.file.path, os.O_RDONLY)
    try:
        byte = os.pread(fd, 1, pair.file.page_offset(region, page) + i // 8)
    finally:
        os.close(fd)
    return bool(byte[0] & (1 << (i % 8)))


class CheckingStore(SparseFile):
    """A source store that checks the promise whenever a host write reaches it: the chunk's
    bit is on disk, in the copy set or (after a split) in the source-changed set."""

    volume: PairVolume
    violations: list[tuple[int, str]]

    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        pair = self.volume.pair
        if pair is not None:
            for c in range(offset // CHUNK, (offset + len(data) - 1) // CHUNK + 1):
                if not (disk_bit(pair, COPY_SET, c) or disk_bit(pair, SRC_CHANGED, c)):
                    self.violations.append((c, pair.phase.name))
        await super().write(offset, data, fua=fua)


def boot(tmp: Path, **kw: float) -> tuple[PairManager, PairVolume, PairVolume, CheckingStore]:
    settings = PairSettings(chunk_size=CHUNK, lazy_commit=0.01, **kw)  # type: ignore[arg-type]
    manager = PairManager(tmp, settings)
    store = CheckingStore(tmp / "lun0.img", SIZE)
    store.violations = []
    src = PairVolume("t/lun0", store)
    store.volume = src
    tgt = PairVolume("t/lun1", SparseFile(tmp / "lun1.img", SIZE))
    manager.register_volume(src)
    manager.register_volume(tgt)
    return manager, src, tgt, store


async def settle(pair: Pair) -> None:
    """Until the copy set is empty and every pending page is written."""
    for _ in range(500):
        if not pair.copy_set.count and not pair.journal.pending() and not pair._tickets:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the pair did not settle")


def test_a_copied_chunk_is_written_again_without_a_sync(tmp_path: Path) -> None:
    async def go() -> None:
        manager, src, tgt, store = boot(tmp_path, clear_delay=3600)
        await manager.create("p", "t/lun0", "t/lun1")
        await manager.wait("p", VolumeState.DUPLEX, timeout=10)
        pair = manager.get("p")
        log = pair.journal

        before = log.commits
        await src.write(3 * CHUNK, b"\x01" * 4096)  # a clean chunk: one sync
        assert log.commits == before + 1 and disk_bit(pair, COPY_SET, 3)
        await settle(pair)
        # Copied and cleared in memory, still set on disk: held.
        assert 3 not in pair.copy_set and disk_bit(pair, COPY_SET, 3) and log.held == 1

        resets, before = log.resets_without_sync, log.commits
        await src.write(3 * CHUNK + 8192, b"\x02" * 4096)
        assert log.resets_without_sync == resets + 1
        assert log.commits == before  # the write waited for no sync
        await settle(pair)
        assert disk_bit(pair, COPY_SET, 3) and log.held == 1

        # Two periods later the clear reaches the disk; the next write syncs again.
        log.age()
        log.age()
        await log.commit()
        assert not disk_bit(pair, COPY_SET, 3) and log.held == 0
        resets, before = log.resets_without_sync, log.commits
        await src.write(3 * CHUNK, b"\x03" * 4096)
        assert log.resets_without_sync == resets and log.commits > before
        await settle(pair)
        assert (tmp_path / "lun1.img").read_bytes()[: 4 * CHUNK] == (
            tmp_path / "lun0.img"
        ).read_bytes()[: 4 * CHUNK]
        assert store.violations == []
        await manager.stop()
        # A clean stop writes the held bits cleared: a restart recopies nothing.
        assert not disk_bit(pair, COPY_SET, 3)
        src.close()
        tgt.close()

    asyncio.run(go())


def test_a_split_releases_held_bits_before_any_post_split_write(tmp_path: Path) -> None:
    async def go() -> None:
        manager, src, tgt, store = boot(tmp_path, clear_delay=3600)
        await manager.create("p", "t/lun0", "t/lun1")
        await manager.wait("p", VolumeState.DUPLEX, timeout=10)
        pair = manager.get("p")
        await src.write(5 * CHUNK, b"\x05" * CHUNK)
        await settle(pair)
        assert disk_bit(pair, COPY_SET, 5) and pair.journal.held == 1
        await manager.split("p")
        assert pair.journal.held == 0
        # A post-split write to that chunk: the commit that makes its source-changed bit
        # durable writes the copy-set bit cleared with it, before the write runs; otherwise
        # a crash would "reflect" the post-split data onto the split image.
        await src.write(5 * CHUNK, b"\x06" * CHUNK)
        assert not disk_bit(pair, COPY_SET, 5) and disk_bit(pair, SRC_CHANGED, 5)
        await manager.wait("p", VolumeState.SPLIT, timeout=10)
        assert (tmp_path / "lun1.img").read_bytes()[5 * CHUNK : 6 * CHUNK] == b"\x05" * CHUNK
        assert store.violations == []
        await manager.stop()
        src.close()
        tgt.close()

    asyncio.run(go())


def test_random_writes_ages_and_a_crash_keep_the_promise(tmp_path: Path) -> None:
    """Concurrent random writes while copying, bits aging every 20 ms, a split with a
    backlog, a crash (no final commit); after restart the split image and the resync hold."""
    rng = random.Random(11)
    model = bytearray(SIZE)

    async def burst(src: PairVolume, n: int) -> None:
        jobs = []
        used: list[range] = []
        for _ in range(n):
            chunk = rng.randrange(SIZE // CHUNK)
            if any(chunk in r for r in used):
                continue  # no overlapping writes in one burst: the model's order is exact
            used.append(range(chunk, chunk + 1))
            off = chunk * CHUNK + rng.randrange(CHUNK // 512) * 512
            data = rng.randbytes(min(rng.randrange(1, 16) * 512, (chunk + 1) * CHUNK - off))
            model[off : off + len(data)] = data
            jobs.append(src.write(off, data))
        await asyncio.gather(*jobs)

    async def first_life() -> bytes:
        manager, src, tgt, store = boot(tmp_path, clear_delay=0.02, copy_rate=2 << 20)
        await manager.create("p", "t/lun0", "t/lun1")
        for _ in range(30):
            await burst(src, 6)
            await asyncio.sleep(rng.choice((0, 0.005, 0.03)))
        assert manager.get("p").journal.resets_without_sync > 0
        # The split must leave a backlog however fast this machine copies and however
        # slowly it writes: every chunk made dirty, the background copy slowed to a chunk
        # a second (the bursts after the split then leave most of it to the crash).
        manager.get("p")._pacer.rate = CHUNK
        whole = rng.randbytes(SIZE)
        model[:] = whole
        await src.write(0, whole)
        image = bytes(model)
        await manager.split("p")
        for _ in range(10):
            await burst(src, 6)
        assert store.violations == []
        assert manager.status("p").phase is Phase.SPLIT_PENDING
        pair = manager.get("p")
        for task in pair._tasks:  # kill -9: no final commit, no header write
            task.cancel()
        await asyncio.gather(*pair._tasks, return_exceptions=True)
        os.close(pair.file.fd)
        src.close()
        tgt.close()
        return image

    async def second_life(image: bytes) -> None:
        manager, src, tgt, store = boot(tmp_path)
        await manager.start()
        await manager.wait("p", VolumeState.SPLIT, timeout=20)
        assert (tmp_path / "lun1.img").read_bytes()[:SIZE] == image
        assert (tmp_path / "lun0.img").read_bytes()[:SIZE] == bytes(model)
        await manager.resync("p")
        await burst(src, 6)
        await manager.wait("p", VolumeState.DUPLEX, timeout=20)
        await settle(manager.get("p"))
        assert (tmp_path / "lun1.img").read_bytes()[:SIZE] == bytes(model)
        assert store.violations == []
        await manager.stop()
        src.close()
        tgt.close()

    image = asyncio.run(first_life())
    asyncio.run(second_life(image))
