"""Pairs survive a restart and a crash: definitions, phases and bitmaps come back from the
pair file, copying resumes, and the split image and the resync still come out right."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import threading
from pathlib import Path

import pytest

from backing.pairs import PairManager, PairSettings, PairVolume, Phase, VolumeState
from backing.pairs.bitmap import ChunkBitmap
from backing.pairs.engine import COPY_SET, SRC_CHANGED
from backing.pairs.journal import PairFile
from backing.sparse_file import SparseFile

KiB = 1 << 10
SIZE = 4 << 20
CHUNK = 64 * KiB


def boot(tmp: Path, rate: int = 0) -> tuple[PairManager, PairVolume, PairVolume]:
    manager = PairManager(tmp, PairSettings(chunk_size=CHUNK, copy_rate=rate, lazy_commit=0.05))
    src = PairVolume("t/lun0", SparseFile(tmp / "lun0.img", SIZE))
    tgt = PairVolume("t/lun1", SparseFile(tmp / "lun1.img", SIZE))
    manager.register_volume(src)
    manager.register_volume(tgt)
    return manager, src, tgt


async def crash(manager: PairManager, *volumes: PairVolume) -> None:
    """What kill -9 leaves: no final commit, no header write; the page cache keeps what
    was written."""
    for pair in manager.pairs.values():
        for task in pair._tasks:
            task.cancel()
        await asyncio.gather(*pair._tasks, return_exceptions=True)
        os.close(pair.file.fd)
    for volume in volumes:
        volume.close()


def read_file(path: Path) -> bytes:
    return path.read_bytes()[:SIZE]


def test_crash_during_split_pending_keeps_the_split_image(tmp_path: Path) -> None:
    rng = random.Random(5)
    model = bytearray(SIZE)

    async def write(volume: PairVolume, offset: int, data: bytes, image: bytearray) -> None:
        image[offset : offset + len(data)] = data
        await volume.write(offset, data)

    async def first_life() -> bytes:
        manager, src, tgt = boot(tmp_path, rate=256 * KiB)
        await write(src, 0, os.urandom(SIZE // 2), model)
        await manager.create("p", "t/lun0", "t/lun1")
        for _ in range(40):
            off = rng.randrange(SIZE // 512) * 512
            await write(src, off, os.urandom(min(rng.randrange(1, 64) * 512, SIZE - off)), model)
        image = bytes(model)
        await manager.split("p")
        assert manager.status("p").phase is Phase.SPLIT_PENDING
        for _ in range(40):
            off = rng.randrange(SIZE // 512) * 512
            await write(src, off, os.urandom(min(rng.randrange(1, 64) * 512, SIZE - off)), model)
        await asyncio.sleep(0.1)  # some lazy commits, some copies
        assert manager.status("p").phase is Phase.SPLIT_PENDING
        await crash(manager, src, tgt)
        return image

    async def second_life(image: bytes) -> None:
        manager, src, tgt = boot(tmp_path)
        await manager.start()
        assert manager.status("p").phase in (Phase.SPLIT_PENDING, Phase.SPLIT)
        await manager.wait("p", VolumeState.SPLIT, timeout=20)
        assert read_file(tmp_path / "lun1.img") == image
        assert read_file(tmp_path / "lun0.img") == bytes(model)
        await manager.resync("p")
        await manager.wait("p", VolumeState.DUPLEX, timeout=20)
        assert read_file(tmp_path / "lun1.img") == bytes(model)
        await manager.stop()
        src.close()
        tgt.close()

    image = asyncio.run(first_life())
    asyncio.run(second_life(image))


def test_clean_restart_keeps_phase_and_bitmaps(tmp_path: Path) -> None:
    async def first() -> tuple[int, int]:
        manager, src, tgt = boot(tmp_path, rate=64 * KiB)
        await manager.create("p", "t/lun0", "t/lun1")
        await src.write(0, b"\x01" * SIZE)
        await manager.split("p")
        await src.write(0, b"\x02" * CHUNK)
        status = manager.status("p")
        await manager.stop()
        src.close()
        tgt.close()
        return status.dirty_chunks, status.changed_chunks

    async def second(dirty: int, changed: int) -> None:
        manager, src, tgt = boot(tmp_path, rate=64 * KiB)
        await manager.start()
        status = manager.status("p")
        assert status.phase is Phase.SPLIT_PENDING
        assert status.changed_chunks == changed == 1
        assert dirty - 2 <= status.dirty_chunks <= dirty
        await manager.delete("p")
        assert not list((tmp_path / "pairs").rglob("*.pair"))
        await manager.stop()
        src.close()
        tgt.close()

    asyncio.run(second(*asyncio.run(first())))


def test_header_survives_a_torn_slot(tmp_path: Path) -> None:
    meta = {"name": "p", "chunks": 10, "npages": 1, "phase": "DUPLEX"}
    pf = PairFile.create(tmp_path / "p.pair", meta, 1)
    pf.write_header({**meta, "phase": "SPLIT"})
    # Tear the newer slot: the older one is used.
    os.pwrite(pf.fd, b"garbage", (pf.seq % 2) * 2048 + 30)
    pf.close()
    pf2, meta2, bitmaps = PairFile.open(tmp_path / "p.pair")
    assert meta2["phase"] == "DUPLEX"
    assert all(isinstance(b, ChunkBitmap) and b.count == 0 for b in bitmaps)
    pf2.close()


def test_a_torn_bitmap_write_after_a_resync_loses_no_changed_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resync moves the changed bits into the copy set. The power may fail while one
    batch of bitmap pages is written: any of its sectors may land and others not. Then the
    chunks changed since the split must still be marked somewhere on disk (a restart, or the
    next resync, merges all three regions), never cleared from the changed regions while
    the copy set that took them never got there."""

    def torn(self: PairFile, pages: list[tuple[int, int, bytes]]) -> None:
        for region, page, data in pages:
            if region != COPY_SET:  # the copy-set page never reached the disk
                os.pwrite(self.fd, data, self.page_offset(region, page))
        raise OSError(errno.EIO, "the power failed before the bitmap sync")

    async def run() -> None:
        manager, src, tgt = boot(tmp_path)
        await manager.create("p", "t/lun0", "t/lun1")
        await manager.wait("p", VolumeState.DUPLEX, timeout=20)
        await manager.split("p")
        await manager.wait("p", VolumeState.SPLIT, timeout=20)
        await src.write(3 * CHUNK, b"s" * 512)  # its changed bit is durable when acknowledged
        await tgt.write(5 * CHUNK, b"t" * 512)
        pair = manager.get("p")
        monkeypatch.setattr(PairFile, "write_pages", torn)
        with contextlib.suppress(OSError):
            await manager.resync("p")
            await pair.journal.commit()
        await crash(manager, src, tgt)

    asyncio.run(run())
    (path,) = (tmp_path / "pairs").rglob("*.pair")
    _, _, bitmaps = PairFile.open(path)
    marked = ChunkBitmap(SIZE // CHUNK)
    for bitmap in bitmaps:
        marked.update(bitmap)
    assert 3 in marked and 5 in marked, sorted(marked)


def test_a_split_while_a_resync_syncs_its_merge_keeps_the_new_changed_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resync clears the changed regions after its merge is synced; a split answered
    in the meantime starts a new changed set, which that clearing must leave alone."""
    gate = threading.Event()
    real_write_pages = PairFile.write_pages

    def slow(self: PairFile, pages: list[tuple[int, int, bytes]]) -> None:
        gate.wait(10)
        real_write_pages(self, pages)

    async def run() -> None:
        manager, src, tgt = boot(tmp_path)
        await manager.create("p", "t/lun0", "t/lun1")
        await manager.wait("p", VolumeState.DUPLEX, timeout=20)
        await manager.split("p")
        await manager.wait("p", VolumeState.SPLIT, timeout=20)
        await src.write(3 * CHUNK, b"s" * 512)
        monkeypatch.setattr(PairFile, "write_pages", slow)
        resync = asyncio.ensure_future(manager.resync("p"))
        await asyncio.sleep(0.1)  # the resync waits for its bitmap sync
        await manager.split("p")
        write = asyncio.ensure_future(src.write(7 * CHUNK, b"n" * 512))
        await asyncio.sleep(0.1)  # the write marked chunk 7 changed and waits for the sync
        gate.set()
        await resync
        await write
        assert 7 in manager.get("p").src_changed
        await manager.stop()
        src.close()
        tgt.close()

    asyncio.run(run())
    (path,) = (tmp_path / "pairs").rglob("*.pair")
    _, _, bitmaps = PairFile.open(path)
    assert 7 in bitmaps[SRC_CHANGED]
