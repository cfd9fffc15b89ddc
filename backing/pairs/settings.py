"""The pair engine's settings (the daemon's ``[pairs]`` table, docs/config.md)."""

from __future__ import annotations

from dataclasses import dataclass

from backing.pairs.states import BackupPolicy

KiB = 1 << 10
MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class PairSettings:
    """Engine knobs. ``chunk_size``: bytes per bitmap bit (see docs/pairs.md for the
    measurement); ``copy_workers``: concurrent chunk copies; ``copy_rate``: bytes per
    second for background copies (0: as fast as the disks go); ``lazy_commit``: seconds
    between writes of cleared bits; ``clear_delay``: while mirroring, a copied chunk's bit
    stays set on disk for one to two of these periods, so a new write to it needs no
    write-intent sync (md's bitmap daemon_sleep, 5 s there too)."""

    chunk_size: int = 256 * KiB
    copy_workers: int = 2
    copy_rate: int = 0
    lazy_commit: float = 1.0
    clear_delay: float = 5.0
    # The backup policy of a pair that was given none of its own: per pair name, else all.
    backup_policy: BackupPolicy = BackupPolicy.REFLECT_FIRST
    backup_policies: tuple[tuple[str, BackupPolicy], ...] = ()
    # A split of a source that can snapshot itself (an RBD image) reads the split set from
    # a snapshot, and host writes to the source skip copy-before-write (docs/rbd.md).
    snapshot_split: bool = True
