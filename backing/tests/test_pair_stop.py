"""PairManager.stop() is the last thing the daemon does with its pairs: once it returns,
everything a pair acknowledged is durable in its file, and nothing of the pair runs on a
thread any more (a bitmap sync landing after the file is closed would write through a
closed, or worse a reused, descriptor; a chunk copy would touch a store being closed)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

from backing.pairs import PairManager, PairSettings, PairVolume, Phase
from backing.pairs.journal import PairFile
from backing.tests.test_pair_engine import CHUNK, SIZE, MemoryStore


class ThreadedStore(MemoryStore):
    """A MemoryStore whose reads run on the loop's executor, held by ``read_gate``."""

    def __init__(self, size: int) -> None:
        super().__init__(size, random.Random(3))
        self.read_gate = threading.Event()
        self.read_gate.set()
        self.reading = threading.Event()
        self.reads_ended: list[float] = []

    async def read_into(self, offset: int, buf: memoryview) -> None:
        def blocking() -> None:
            self.reading.set()
            self.read_gate.wait(10)
            buf[:] = self.data[offset : offset + len(buf)]
            self.reads_ended.append(time.monotonic())

        await asyncio.get_running_loop().run_in_executor(None, blocking)


def boot(tmp: Path, source: MemoryStore) -> tuple[PairManager, PairVolume, PairVolume]:
    manager = PairManager(tmp, PairSettings(chunk_size=CHUNK, lazy_commit=0.01, copy_workers=1))
    src = PairVolume("t/lun0", source)
    tgt = PairVolume("t/lun1", MemoryStore(SIZE, random.Random(4)))
    manager.register_volume(src)
    manager.register_volume(tgt)
    return manager, src, tgt


def test_stop_waits_for_the_bitmap_sync_of_a_write_in_flight(tmp_path: Path) -> None:
    async def go() -> None:
        manager, src, _ = boot(tmp_path, MemoryStore(SIZE, random.Random(5)))
        await manager.create("p", "t/lun0", "t/lun1")
        await manager.wait("p", Phase.DUPLEX.target, timeout=5)
        pair = manager.get("p")
        pair_file = pair.file
        assert isinstance(pair_file, PairFile)
        gate, syncing = threading.Event(), threading.Event()
        write_pages = pair_file.write_pages

        def slow_write_pages(pages: list[tuple[int, int, bytes]]) -> None:
            syncing.set()
            gate.wait(10)
            write_pages(pages)

        pair_file.write_pages = slow_write_pages  # type: ignore[method-assign]
        last = SIZE // CHUNK - 1
        write = asyncio.ensure_future(src.write(last * CHUNK, b"\x01" * CHUNK))
        await asyncio.get_running_loop().run_in_executor(None, syncing.wait, 5)
        stop = asyncio.ensure_future(manager.stop())
        await asyncio.sleep(0.3)
        assert not stop.done(), "stop() returned while the bitmap sync was still running"
        gate.set()
        await asyncio.wait_for(stop, 5)
        await asyncio.wait_for(write, 5)  # acknowledged: its bit is on disk
        _, _, bitmaps = PairFile.open(pair_file.path)
        assert last in bitmaps[0]

    asyncio.run(go())


def test_no_chunk_copy_runs_on_a_thread_after_stop(tmp_path: Path) -> None:
    async def go() -> None:
        store = ThreadedStore(SIZE)
        store.data[:] = b"\x05" * SIZE
        manager, _, _ = boot(tmp_path, store)
        store.read_gate.clear()
        await manager.create("p", "t/lun0", "t/lun1")
        await asyncio.get_running_loop().run_in_executor(None, store.reading.wait, 5)
        stop = asyncio.ensure_future(manager.stop())
        await asyncio.sleep(0.3)
        assert not stop.done(), "stop() returned while a chunk copy ran on a thread"
        store.read_gate.set()
        await asyncio.wait_for(stop, 5)
        stopped = time.monotonic()
        assert store.reads_ended and max(store.reads_ended) <= stopped
        await asyncio.sleep(0.2)  # no copy starts after stop either
        assert max(store.reads_ended) <= stopped

    asyncio.run(go())
