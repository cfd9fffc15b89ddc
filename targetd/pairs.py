"""The daemon's side of volume pairs: volume ids for LUNs, and the vendor commands' view.

A block LUN's volume id is its LU's device id (``<target iqn>/lun<N>``), so a pair file
names its volumes the same way across restarts, and the target's name is the scope of its
pair names (a name taken on one target is free on another). :class:`TargetPairs` gives
the SCSI pair commands of one target its LUN-numbered view of the :class:`PairService`.
"""

from __future__ import annotations

from backing.pairs import BackupPolicy, PairService, PairSettings
from targetd.config import Config


def volume_id(target: str, lun: int) -> str:
    return f"{target}/lun{lun}"


class TargetPairs:
    """``scsi.pair_commands.PairControl`` for one target: its block LUNs' volume ids."""

    def __init__(self, service: PairService, target: str) -> None:
        self.service = service
        self.target = target
        self.luns: set[int] = set()  # the target's block LUNs (a reload may add some)

    def volume_of(self, lun: int) -> str | None:
        return volume_id(self.target, lun) if lun in self.luns else None

    def lun_of(self, volume: str) -> int | None:
        prefix = f"{self.target}/lun"
        tail = volume[len(prefix) :]
        if not volume.startswith(prefix) or not tail.isdigit() or int(tail) not in self.luns:
            return None
        return int(tail)


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
        snapshot_split=p.rbd_snapshot_split,
        clear_delay=p.clear_delay_ms / 1000,
    )
