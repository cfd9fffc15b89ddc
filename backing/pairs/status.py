"""What a pair reports of itself: :class:`PairStatus` (PAIR IN, targetctl, metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backing.pairs.states import BackupPolicy, Phase, SuspendReason


@dataclass(frozen=True, slots=True)
class PairStatus:
    name: str
    source: str
    target: str
    phase: Phase
    reason: SuspendReason
    size: int
    chunk_size: int
    chunks: int
    dirty_chunks: int  # not yet on the target (after a split: of the split-instant set)
    changed_chunks: int  # written on either side since the split
    percent_in_sync: float
    copy_rate: float  # bytes per second, over the last few seconds
    copied_bytes: int
    split_time: float | None
    backup_policy: BackupPolicy = BackupPolicy.REFLECT_FIRST  # the one a backup follows
    backup_policy_set: bool = False  # set on the pair (vendor command, targetctl)
    error: str | None = None  # what made the pair SUSPENDED (with ``reason``), if it failed
    group: str | None = None  # the consistency group the pair is in, if any

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "target": self.target,
            "source_state": self.phase.source.label,
            "target_state": self.phase.target.label,
            "reason": self.reason.name,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunks": self.chunks,
            "dirty_chunks": self.dirty_chunks,
            "changed_chunks": self.changed_chunks,
            "percent_in_sync": self.percent_in_sync,
            "copy_rate": self.copy_rate,
            "copied_bytes": self.copied_bytes,
            "split_time": self.split_time,
            "backup_policy": self.backup_policy.label,
            "backup_policy_set": self.backup_policy_set,
            "error": self.error,
            "group": self.group,
        }
