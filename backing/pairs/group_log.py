"""The group-split record: one durable write makes a consistency group's split answerable.

One small file per group, ``<pairs dir>/<scope>/<group>.group``, laid out like a pair
file's header: two 4 KiB slots, ``magic, seq u64, length u32, crc32 u32, JSON``; the valid
slot with the higher sequence wins, so a torn write leaves the previous record in force.

A record is ``{"token", "split_time", "pending"}``: the group split ``token`` at
``split_time``, and the members whose own headers may not say so yet. A group split sets
every member's phase in memory (the split instant), writes this record with one
``fdatasync`` and is answered; the members' headers follow in the background, and once
they are durable the record is written again with ``pending`` empty (off the answer's
path). A restart brings the header of every member still ``pending`` up to date before
the pair is built (:meth:`backing.pairs.manager.PairManager.start`). Compared with a
header sync per member, the split costs one sync whatever the group's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backing.durable import sync_directory
from backing.pairs.record_io import Lane, decode_slot, encode_slot

MAGIC = b"TDGROUP1"
SLOT_BYTES = 4096
SUFFIX = ".group"


@dataclass(frozen=True, slots=True)
class SplitRecord:
    """The group's last split: its id, its instant, and the members whose headers may not
    carry it yet."""

    token: str
    split_time: float
    pending: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"token": self.token, "split_time": self.split_time, "pending": list(self.pending)}


def _decode(raw: bytes) -> tuple[int, SplitRecord] | None:
    found = decode_slot(MAGIC, raw)
    if found is None:
        return None
    seq, data = found
    try:
        return seq, SplitRecord(
            str(data["token"]), float(data["split_time"]), tuple(map(str, data["pending"]))
        )
    except (ValueError, KeyError, TypeError):
        return None


class GroupLog:
    """One group's split record file. The blocking calls run on the file's own thread
    (never queued behind data I/O on the loop's shared executor) through :meth:`commit`."""

    def __init__(self, path: Path, fd: int, seq: int, record: SplitRecord | None) -> None:
        self.path = path
        self.fd = fd
        self.seq = seq
        self.record = record  # the last one written (or read back)
        self._lane = Lane("group-split")

    @classmethod
    def open(cls, path: Path) -> GroupLog:
        """Open (creating it, durably, if absent) the record file at ``path``."""
        created = False
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.ftruncate(fd, 2 * SLOT_BYTES)
            os.fsync(fd)
            created = True
        best: tuple[int, SplitRecord] | None = None
        for slot in range(2):
            found = _decode(os.pread(fd, SLOT_BYTES, slot * SLOT_BYTES))
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        if created:
            sync_directory(path.parent)
        return cls(path, fd, 0, None) if best is None else cls(path, fd, best[0], best[1])

    def write(self, record: SplitRecord) -> None:
        """Write the next slot and make it durable (blocking)."""
        seq = self.seq + 1
        slot = encode_slot(MAGIC, seq, record.as_dict(), SLOT_BYTES, "group split record")
        os.pwrite(self.fd, slot, (seq % 2) * SLOT_BYTES)
        os.fdatasync(self.fd)
        self.seq = seq
        self.record = record

    async def commit(self, record: SplitRecord) -> None:
        """:meth:`write` on the file's own thread."""
        await self._lane.run(self.write, record)

    def close(self) -> None:
        self._lane.shutdown()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        sync_directory(self.path.parent)


__all__ = ["SUFFIX", "GroupLog", "SplitRecord"]
