"""The daemon's side of volume pairs: volume ids for LUNs, and the vendor commands' view.

A block LUN's volume id is its LU's device id (``<target iqn>/lun<N>``), so a pair file
names its volumes the same way across restarts. :class:`TargetPairs` gives the SCSI pair
commands of one target its LUN-numbered view of the :class:`PairManager`.
"""

from __future__ import annotations

from backing.pairs import (
    BackupPolicy,
    ErrorCode,
    PairError,
    PairManager,
    PairSettings,
    PairStatus,
    PairVolume,
)
from targetd.config import Config


def volume_id(target: str, lun: int) -> str:
    return f"{target}/lun{lun}"


class TargetPairs:
    """``scsi.pair_commands.PairControl`` for one target's LUNs."""

    def __init__(self, manager: PairManager, target: str, luns: set[int]) -> None:
        self.manager = manager
        self.target = target
        self.luns = luns  # the target's block LUNs

    def has_lun(self, lun: int) -> bool:
        return lun in self.luns

    def _pair_name(self, lun: int) -> str:
        pair = self.manager.pair_of(volume_id(self.target, lun))
        if pair is None:
            raise PairError(ErrorCode.UNKNOWN_PAIR, f"LUN {lun} is not in a pair")
        return pair.name

    async def create(
        self, name: str, source_lun: int, target_lun: int, policy: BackupPolicy | None = None
    ) -> None:
        await self.manager.create(
            name, volume_id(self.target, source_lun), volume_id(self.target, target_lun), policy
        )

    async def set_backup_policy(self, lun: int, policy: BackupPolicy | None) -> None:
        await self.manager.set_backup_policy(self._pair_name(lun), policy)

    async def split(self, lun: int) -> None:
        await self.manager.split(self._pair_name(lun))

    async def resync(self, lun: int) -> None:
        await self.manager.resync(self._pair_name(lun))

    async def delete(self, lun: int) -> None:
        await self.manager.delete(self._pair_name(lun))

    def status(self, lun: int) -> tuple[PairStatus, int, int] | None:
        pair = self.manager.pair_of(volume_id(self.target, lun))
        if pair is None:
            return None
        return pair.status(), self._lun_of(pair.source), self._lun_of(pair.target)

    def _lun_of(self, volume: PairVolume) -> int:
        prefix = f"{self.target}/lun"
        vid = volume.volume_id
        return int(vid[len(prefix) :]) if vid.startswith(prefix) else 0xFFFF


def pair_settings(config: Config) -> PairSettings:
    """The engine's settings from the ``[pairs]`` table (chunk size applies to new pairs;
    an existing pair keeps the chunk size its file records)."""
    p = config.pairs
    return PairSettings(
        chunk_size=p.chunk_size,
        copy_workers=p.copy_workers,
        copy_rate=p.copy_rate,
        backup_policy=BackupPolicy.parse(p.backup_policy),
        backup_policies=tuple((name, BackupPolicy.parse(v)) for name, v in p.backup_policies),
    )
