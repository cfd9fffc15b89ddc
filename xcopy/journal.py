"""Copy results that survive a restart: one small JSON file per kept operation.

A copy whose results are kept (LIST ID USAGE 00b/10b) is recorded when it starts, after
each segment, every 0.2 s while a long segment runs, and when it ends; the record goes
when RECEIVE COPY RESULTS has reported it. A record still saying "running" when the
daemon starts belongs to a copy the daemon died under (kill -9, power cut): it is
reported as failed, COPY ABORTED 29h/00h, with the segments and bytes it had done when
last recorded (counted only once written: whole records on a tape), so the backup server
learns how far the backup got and that it did not finish.

Two files per copy. The record (``.json``: the copy, its state, and its progress when it
started or ended) is written on the journal's own thread, off the event loop, in the order
asked: to a temporary file that is fsynced before it is renamed over the old one, with the
directory fsynced after, so a power cut leaves the old record or the new one, never an
empty file. The copy manager waits for the first record of a copy before EXTENDED COPY is
answered, so an acknowledged copy is never forgotten. Progress while the copy runs goes to
a second file (``.progress``), written at once with rename but not fsynced, as often as a
segment ends: a kill -9 loses none of it (the kernel holds it), a power cut may leave it
older or unreadable, and then the record's own account stands, older but still true.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backing.durable import replace_file, sync_directory
from backing.threads import Lane, outlast

log = logging.getLogger(__name__)


class CopyJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lane = Lane("copy-journal")
        self._last: asyncio.Future[None] | None = None

    def _path(self, initiator: str, list_id: int) -> Path:
        who = hashlib.sha256(initiator.encode()).hexdigest()[:16]
        return self.directory / f"{who}-{list_id:08x}.json"

    def progress(self, record: dict[str, Any]) -> None:
        """Note a running copy's progress: survives kill -9 at once, a power cut maybe not."""
        path = self._path(record["initiator"], record["list_id"]).with_suffix(".progress")
        tmp = path.with_suffix(".ptmp")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, path)

    def save(self, record: dict[str, Any]) -> asyncio.Future[None] | None:
        """Record ``record`` durably, after every record asked for before it.

        On the event loop the write runs on the journal's thread and the returned future
        says when it is on stable storage; without a running loop (recovery at start) it
        is written at once and None is returned.
        """
        path = self._path(record["initiator"], record["list_id"])
        return self._post(self._write, path, json.dumps(record, sort_keys=True))

    def remove(self, initiator: str, list_id: int) -> asyncio.Future[None] | None:
        """Drop a record, after every write asked for before it."""
        return self._post(self._unlink, self._path(initiator, list_id))

    async def settled(self) -> None:
        """Every record asked for so far has been written (or has failed, logged)."""
        if self._last is not None:
            await outlast(self._last)

    def close(self) -> None:
        self._lane.shutdown(wait=True)

    def _post(self, fn: Callable[..., None], *args: Any) -> asyncio.Future[None] | None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            fn(*args)
            return None
        future = self._lane.submit(fn, *args)
        future.add_done_callback(_log_failure)
        self._last = future
        return future

    def _write(self, path: Path, text: str) -> None:
        replace_file(path, text.encode(), mode=0o600)

    def _unlink(self, path: Path) -> None:
        path.with_suffix(".progress").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        sync_directory(self.directory)

    def load(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                log.warning("copy record %s unreadable, dropped: %s", path, err)
                path.unlink(missing_ok=True)
                continue
            if record.get("state") == "running":
                record.update(_later_progress(path.with_suffix(".progress"), record))
            records.append(record)
        for stray in self.directory.glob("*.progress"):
            if not stray.with_suffix(".json").exists():
                stray.unlink(missing_ok=True)
        return records


def _later_progress(path: Path, record: dict[str, Any]) -> dict[str, int]:
    """The progress noted after ``record`` was written, if it is readable and further on."""
    try:
        noted = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    keys = ("segments_processed", "bytes_done")
    if not all(isinstance(noted.get(k), int) for k in keys):
        return {}
    if (noted["segments_processed"], noted["bytes_done"]) < tuple(record[k] for k in keys):
        return {}
    return {k: noted[k] for k in keys}


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("copy record not written: %s", future.exception())
