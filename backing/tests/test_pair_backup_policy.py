"""A pair's backup policy: parsed by name or code, kept in the pair file across a
restart, the configured one when the pair has none, reported in its status."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backing.pairs import BackupPolicy, PairManager, PairSettings, PairVolume
from backing.pairs.journal import PairFile
from backing.sparse_file import SparseFile

SIZE = 1 << 20
SETTINGS = PairSettings(
    chunk_size=64 << 10,
    backup_policy=BackupPolicy.MERGE,
    backup_policies=(("db", BackupPolicy.WAIT),),
)


def boot(tmp: Path) -> PairManager:
    manager = PairManager(tmp, SETTINGS)
    for n in (0, 1, 2, 3):
        manager.register_volume(PairVolume(f"t/lun{n}", SparseFile(tmp / f"l{n}.img", SIZE)))
    return manager


def test_parse_names_and_codes() -> None:
    assert BackupPolicy.parse("split-and-backup") is BackupPolicy.SPLIT_AND_BACKUP
    assert BackupPolicy.parse("REFLECT_FIRST") is BackupPolicy.REFLECT_FIRST
    assert BackupPolicy.parse("3") is BackupPolicy.MERGE
    assert [p.label for p in BackupPolicy] == ["reflect-first", "wait", "merge", "split-and-backup"]
    with pytest.raises(ValueError, match="unknown backup policy"):
        BackupPolicy.parse("5")


def test_policy_is_kept_in_the_pair_file(tmp_path: Path) -> None:
    async def run() -> None:
        manager = boot(tmp_path)
        await manager.start()
        db = await manager.create("db", "t/lun0", "t/lun1")
        other = await manager.create("other", "t/lun2", "t/lun3", BackupPolicy.SPLIT_AND_BACKUP)
        assert (db.backup_policy, db.backup_policy_set) == (BackupPolicy.WAIT, False)
        assert (other.backup_policy, other.backup_policy_set) == (
            BackupPolicy.SPLIT_AND_BACKUP,
            True,
        )
        status = await manager.set_backup_policy("db", BackupPolicy.REFLECT_FIRST)
        assert status.as_dict()["backup_policy"] == "reflect-first"
        _, meta, _ = PairFile.open(tmp_path / "pairs" / "t" / "db.pair")
        assert meta["backup_policy"] == 1  # durable before the call returned
        await manager.stop()

        manager = boot(tmp_path)
        await manager.start()
        assert manager.status("db").backup_policy is BackupPolicy.REFLECT_FIRST
        assert manager.get("other").backup_policy is BackupPolicy.SPLIT_AND_BACKUP
        status = await manager.set_backup_policy("other", None)  # the configured default
        assert (status.backup_policy, status.backup_policy_set) == (BackupPolicy.MERGE, False)
        await manager.stop()

    asyncio.run(run())
