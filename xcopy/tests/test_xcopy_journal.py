"""The copy journal: a durable record per copy, and progress notes that may be lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from xcopy.journal import CopyJournal


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "initiator": "iqn.2026-11.org.test:i,i,0x1",
        "list_id": 7,
        "service_action": 1,
        "list_id_usage": 0,
        "immed": True,
        "g_sense": False,
        "lun": 0,
        "state": "running",
        "segments_processed": 0,
        "bytes_done": 0,
        "sense": None,
    }
    return base | changes


def test_progress_noted_after_the_record_is_what_a_restart_reads(tmp_path: Path) -> None:
    journal = CopyJournal(tmp_path)
    journal.save(record())
    journal.progress(record(segments_processed=3, bytes_done=3 << 23))
    [loaded] = CopyJournal(tmp_path).load()
    assert (loaded["segments_processed"], loaded["bytes_done"]) == (3, 3 << 23)


def test_a_torn_progress_note_leaves_the_record_standing(tmp_path: Path) -> None:
    """A power cut may leave the unsynced progress note empty or half written."""
    journal = CopyJournal(tmp_path)
    journal.save(record(segments_processed=1, bytes_done=512))
    journal.progress(record(segments_processed=2, bytes_done=1024))
    [note] = tmp_path.glob("*.progress")
    note.write_text('{"segments_proc')
    [loaded] = CopyJournal(tmp_path).load()
    assert (loaded["state"], loaded["segments_processed"], loaded["bytes_done"]) == (
        "running",
        1,
        512,
    )


def test_an_ended_copy_keeps_its_own_account_and_strays_go(tmp_path: Path) -> None:
    journal = CopyJournal(tmp_path)
    journal.save(record(state="completed", segments_processed=4, bytes_done=4096))
    journal.progress(record(segments_processed=3, bytes_done=3072))
    journal.progress(record(list_id=8, segments_processed=1))  # its record never written
    [loaded] = CopyJournal(tmp_path).load()
    assert (loaded["state"], loaded["segments_processed"]) == ("completed", 4)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".progress"]


def test_records_are_written_in_order_off_the_loop_and_removal_follows(tmp_path: Path) -> None:
    async def main() -> None:
        journal = CopyJournal(tmp_path)
        first = journal.save(record())
        assert first is not None
        journal.save(record(state="completed", segments_processed=1))
        await first
        journal.remove(record()["initiator"], 7)
        await journal.settled()
        assert not list(tmp_path.iterdir())
        journal.close()

    asyncio.run(main())
