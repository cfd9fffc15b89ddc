"""The pair file is written and synced on its own threads: never on the event loop, and never
queued behind data I/O on the loop's shared executor (a SPLIT waits for one header sync)."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from backing.pairs import PairManager, PairSettings, PairVolume, Phase
from backing.sparse_file import SparseFile

SIZE = 4 << 20
CHUNK = 64 << 10


def boot(tmp: Path) -> tuple[PairManager, PairVolume, PairVolume]:
    manager = PairManager(tmp, PairSettings(chunk_size=CHUNK, copy_rate=1, lazy_commit=0.01))
    src = PairVolume("t/lun0", SparseFile(tmp / "lun0.img", SIZE))
    tgt = PairVolume("t/lun1", SparseFile(tmp / "lun1.img", SIZE))
    manager.register_volume(src)
    manager.register_volume(tgt)
    return manager, src, tgt


def test_split_does_not_queue_behind_a_busy_default_executor(tmp_path: Path) -> None:
    """Every thread of the loop's default executor is held (as by a long flush of a large
    target); the split's header sync still completes."""
    manager, src, tgt = boot(tmp_path)

    async def main() -> Phase:
        await src.write(0, os.urandom(SIZE))
        await manager.create("p", "t/lun0", "t/lun1")  # backlog: the whole volume
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        held = threading.Event()
        blocked = loop.run_in_executor(None, held.wait)
        try:
            await asyncio.wait_for(manager.split("p"), timeout=10)
            phase = manager.get("p").phase
        finally:
            held.set()
            await blocked
        await manager.stop()
        return phase

    assert asyncio.run(main()) is Phase.SPLIT_PENDING
    src.close()
    tgt.close()


def test_pair_file_syncs_happen_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, src, tgt = boot(tmp_path)
    pair_dir = tmp_path / "pairs"
    syncs: list[tuple[str, int]] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(pair_dir)):
            syncs.append((os.readlink(f"/proc/self/fd/{fd}"), threading.get_ident()))
        real(fd)

    async def main() -> int:
        await src.write(0, os.urandom(SIZE))
        await manager.create("p", "t/lun0", "t/lun1")
        monkeypatch.setattr(os, "fdatasync", spy)
        await manager.split("p")  # a header sync
        await src.write(0, os.urandom(4096))  # a bitmap sync: the source-changed bit
        await manager.resync("p")
        await manager.delete("p")
        await manager.stop()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(syncs) >= 3
    assert [path for path, thread in syncs if thread == loop_thread] == []
    assert not list(pair_dir.glob("*.pair"))
    src.close()
    tgt.close()


def test_a_cancelled_header_write_still_ends_before_the_next(tmp_path: Path) -> None:
    """Two header writes never run at once (each picks its slot from the sequence number)."""
    manager, src, tgt = boot(tmp_path)

    async def main() -> Any:
        await src.write(0, os.urandom(SIZE))  # a backlog the crawling copy keeps: no phase
        await manager.create("p", "t/lun0", "t/lun1")  # change writes a header meanwhile
        pair = manager.get("p")
        seq = pair.file.seq
        task = asyncio.ensure_future(pair.file.commit_header(pair.meta()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pair.file.seq == seq + 1  # the write ran to its end before the task ended
        await manager.split("p")
        assert pair.file.seq == seq + 2
        await manager.stop()

    asyncio.run(main())
    src.close()
    tgt.close()
