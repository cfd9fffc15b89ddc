"""New daemon settings (a reload) reach the running pairs: copy rate, copy workers, the
configured backup policy; the chunk size only pairs created afterwards."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from backing.pairs import BackupPolicy, Phase
from backing.tests.test_pair_engine import CHUNK, make


def test_apply_settings_reaches_running_pairs(tmp_path: Path) -> None:
    async def go() -> None:
        manager, src, _ = make(tmp_path, 7, copy_workers=1)
        await manager.create("p", "t/lun0", "t/lun1")
        await manager.wait("p", Phase.DUPLEX.target, timeout=5)
        pair = manager.get("p")
        assert len(pair._workers) == 1
        settings = replace(
            manager.settings,
            copy_workers=3,
            copy_rate=1 << 20,
            backup_policy=BackupPolicy.MERGE,
            chunk_size=2 * CHUNK,
        )
        manager.apply_settings(settings)
        assert len(pair._workers) == 3 and all(not w.done() for w in pair._workers)
        assert pair._pacer.rate == 1 << 20
        assert manager.status("p").backup_policy is BackupPolicy.MERGE
        manager.apply_settings(replace(settings, copy_workers=1, copy_rate=0))
        await asyncio.sleep(0)
        assert len(pair._workers) == 1 and pair._pacer.rate == 0
        assert manager.status("p").chunk_size == CHUNK  # the pair keeps its own
        await src.write(0, b"\x03" * CHUNK)  # the one worker left still copies
        await manager.wait("p", Phase.DUPLEX.target, timeout=5)
        await manager.stop()

    asyncio.run(go())
