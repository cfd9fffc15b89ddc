"""Copy results that survive a restart: one small JSON file per kept operation.

A copy whose results are kept (LIST ID USAGE 00b/10b) is recorded when it starts, after
each segment, every 0.2 s while a long segment runs, and when it ends; the record goes
when RECEIVE COPY RESULTS has reported it. A record still saying "running" when the
daemon starts belongs to a copy the daemon died under (kill -9, power cut): it is
reported as failed, COPY ABORTED 29h/00h, with the segments and bytes it had done when
last recorded (counted only once written: whole records on a tape), so the backup server
learns how far the backup got and that it did not finish.

Records are written with rename (a reader never sees half a record) but not fsynced: a
killed process loses nothing the kernel holds; after a power cut the record may be older.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class CopyJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, initiator: str, list_id: int) -> Path:
        who = hashlib.sha256(initiator.encode()).hexdigest()[:16]
        return self.directory / f"{who}-{list_id:08x}.json"

    def save(self, record: dict[str, Any]) -> None:
        path = self._path(record["initiator"], record["list_id"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, path)

    def remove(self, initiator: str, list_id: int) -> None:
        self._path(initiator, list_id).unlink(missing_ok=True)

    def load(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError) as err:
                log.warning("copy record %s unreadable, dropped: %s", path, err)
                path.unlink(missing_ok=True)
        return records
