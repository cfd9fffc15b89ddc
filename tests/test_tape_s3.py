"""Tapes in an S3 bucket (backing.tape_s3) against a real S3 server (SeaweedFS, started by
the ``s3_server`` fixture): records and file marks round-trip, parts go up while records
stream, a crash mid-write is mended on opening, abandoned uploads go, a cut keeps the
right records."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
from s3_server import S3Server

from backing.errors import MediumWriteError
from backing.s3_client import S3Location
from backing.tape_image import ENTRY_SIZE, MediumFull, TapeImageError
from backing.tape_s3 import S3Tape
from backing.tape_s3_objects import MIN_PART, PARTS_PER_STEP, create_tape, part_target
from backing.tape_s3_store import S3TapeStore

_names = itertools.count()


def record(i: int, size: int) -> bytes:
    return (i.to_bytes(4, "big") + random.Random(i).randbytes(60)) * (size // 64) + bytes(size % 64)


@pytest.fixture
def location(s3_server: S3Server) -> S3Location:
    return S3Location("tapes", f"t{os.getpid()}-{next(_names)}/", s3_server.endpoint)


@pytest.fixture
def client(location: S3Location):
    return location.client()


def new_tape(client, location: S3Location, spool: Path, capacity: int = 1 << 30, **kw) -> S3Tape:
    create_tape(client, location, "T1", capacity)
    return S3Tape(client, location, "T1", spool, **kw)


def crash(tape: S3Tape) -> None:
    """The process dies: nothing is flushed; what reached the spool stays (the part in
    flight lands first, so that the test knows what is in the bucket)."""
    if tape._inflight is not None:
        tape._inflight.exception()
    tape._spool.close()


def uploads(client, location: S3Location) -> list[str]:
    answer = client.list_multipart_uploads(Bucket="tapes", Prefix=location.prefix)
    return [u["Key"] for u in answer.get("Uploads", ())]


def test_part_sizes_grow_so_ten_thousand_parts_outlast_any_tape() -> None:
    assert part_target(1) == 8 << 20
    assert part_target(PARTS_PER_STEP) == 8 << 20
    assert part_target(PARTS_PER_STEP + 1) == 16 << 20
    assert part_target(1, first=1 << 20) == MIN_PART  # never below S3's smallest part
    total = sum(part_target(n) for n in range(1, 10_001))
    assert total > 8 * 10**12


def test_records_and_filemarks_round_trip(client, location, tmp_path) -> None:
    tape = new_tape(client, location, tmp_path)
    records = [record(i, 1000 + i) for i in range(5)]
    for r in records[:3]:
        tape.append_record(r)
    assert tape.append_filemarks(2) == 2
    for r in records[3:]:
        tape.append_record(r)
    tape.flush()
    tape.append_filemarks(1)
    tape.close()
    again = S3Tape(client, location, "T1", tmp_path)
    assert len(again) == 8
    assert [again.filemark_index(n) for n in range(again.filemark_count())] == [3, 4, 7]
    assert again.next_filemark(5) == 7 and again.previous_filemark(5) == 4
    assert [again.read(i) for i in (0, 1, 2, 5, 6)] == records
    assert again.used == sum(ENTRY_SIZE + len(r) for r in records) + 3 * ENTRY_SIZE
    assert again.recovery.lost == 0 and again.recovery.aborted_uploads == 0
    assert uploads(client, location) == []
    assert not list(tmp_path.iterdir())  # nothing spooled once everything is in the bucket


def test_parts_go_up_while_records_stream(client, location, tmp_path) -> None:
    tape = new_tape(client, location, tmp_path, first_part=MIN_PART)
    for i in range(12):
        tape.append_record(record(i, 1 << 20))
    # Two parts of at least 5 MiB are in the bucket before any sync point.
    assert uploads(client, location) == [f"{location.prefix}T1/seg-00000001"]
    assert tape._sent >= 10 << 20
    assert tape.buffered == (12, 12 * (ENTRY_SIZE + (1 << 20)))
    tape.close()
    assert uploads(client, location) == []
    again = S3Tape(client, location, "T1", tmp_path)
    assert [again.read(i) for i in range(12)] == [record(i, 1 << 20) for i in range(12)]


def test_a_crash_mid_write_keeps_every_acknowledged_record(client, location, tmp_path) -> None:
    tape = new_tape(client, location, tmp_path, first_part=MIN_PART)
    tape.append_record(record(0, 100))
    tape.append_filemarks(1)
    tape.flush()
    for i in range(1, 14):  # two parts up, the rest in the spool
        tape.append_record(record(i, 1 << 20))
    crash(tape)
    again = S3Tape(client, location, "T1", tmp_path)
    assert len(again) == 15
    assert again.recovery.recovered == 13 and again.recovery.lost == 0
    assert again.read(0) == record(0, 100)
    assert [again.read(i) for i in range(2, 15)] == [record(i, 1 << 20) for i in range(1, 14)]
    assert uploads(client, location) == []
    again.append_record(b"after")  # appending goes on after the mended segment
    again.close()
    third = S3Tape(client, location, "T1", tmp_path)
    assert len(third) == 16 and third.read(15) == b"after"


class LosesPart:
    """The real client, but the upload of one part fails ``times`` times (the daemon died
    while it was in flight, or the bucket was away)."""

    def __init__(self, client, part: int, times: int = 1_000_000) -> None:
        self.client, self.part, self.times = client, part, times

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def upload_part(self, **kw):
        if kw["PartNumber"] == self.part and self.times:
            self.times -= 1
            raise ConnectionError("killed mid-upload")
        return self.client.upload_part(**kw)


def test_a_part_lost_in_flight_comes_back_from_both_spools(client, location, tmp_path) -> None:
    create_tape(client, location, "T1", 1 << 30)
    tape = S3Tape(LosesPart(client, 2), location, "T1", tmp_path, first_part=MIN_PART)
    # 3 MiB records: part 1 goes at 6 MiB, part 2 (lost) at 12, 3 MiB stay in a spool.
    for i in range(5):
        tape.append_record(record(i, 3 << 20))
    crash(tape)
    assert [p["PartNumber"] for p in tape._parts] == [1]
    again = S3Tape(client, location, "T1", tmp_path)
    assert again.recovery.lost == 0 and again.recovery.recovered == 5
    assert [again.read(i) for i in range(5)] == [record(i, 3 << 20) for i in range(5)]


def test_a_failed_part_is_sent_again_in_its_place(client, location, tmp_path) -> None:
    create_tape(client, location, "T1", 1 << 30)
    flaky = LosesPart(client, 2, times=2)
    tape = S3Tape(flaky, location, "T1", tmp_path, first_part=MIN_PART)
    for i in range(5):
        tape.append_record(record(i, 3 << 20))
    # The next part waits for part 2, which fails again when sent once more: WRITE ERROR
    # for this record (it is in the spool), and part 2 stays pending.
    with pytest.raises(MediumWriteError):
        tape.append_record(record(5, 3 << 20))
    tape.append_record(record(6, 3 << 20))  # the bucket is back: part 2, then part 3
    tape.close()
    assert flaky.times == 0
    again = S3Tape(client, location, "T1", tmp_path)
    assert [again.read(i) for i in range(7)] == [record(i, 3 << 20) for i in range(7)]


def test_a_torn_spool_loses_only_the_torn_record_and_says_so(client, location, tmp_path) -> None:
    tape = new_tape(client, location, tmp_path)
    for i in range(4):
        tape.append_record(record(i, 4096))
    crash(tape)
    spool = tmp_path / "T1.spool.0"
    with open(spool, "r+b") as f:  # the last record's bytes garbled (a power cut)
        f.seek(os.path.getsize(spool) - 100)
        f.write(b"\xff" * 50)
    again = S3Tape(client, location, "T1", tmp_path)
    assert len(again) == 3
    assert again.recovery.lost == 1
    assert again.recovery.cut_bytes == ENTRY_SIZE + 4096
    assert [again.read(i) for i in range(3)] == [record(i, 4096) for i in range(3)]


def test_a_crash_before_the_first_part_keeps_what_was_spooled(client, location, tmp_path) -> None:
    tape = new_tape(client, location, tmp_path)
    tape.append_record(b"only in the spool")
    tape.append_filemarks(1)
    crash(tape)
    again = S3Tape(client, location, "T1", tmp_path)
    assert len(again) == 2 and again.read(0) == b"only in the spool"
    assert again.is_filemark(1)


def test_an_abandoned_upload_is_aborted_on_opening(client, location, tmp_path) -> None:
    create_tape(client, location, "T1", 1 << 30)
    key = f"{location.prefix}T1/seg-00000007"
    upload = client.create_multipart_upload(Bucket="tapes", Key=key)
    client.upload_part(
        Bucket="tapes", Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 100
    )
    assert uploads(client, location) == [key]
    tape = S3Tape(client, location, "T1", tmp_path)
    assert tape.recovery.aborted_uploads == 1
    assert uploads(client, location) == []
    assert len(tape) == 0


def test_a_cut_keeps_what_comes_before_it(client, location, tmp_path) -> None:
    tape = new_tape(client, location, tmp_path)
    for segment in range(3):
        for i in range(3):
            tape.append_record(record(10 * segment + i, 500))
        tape.append_filemarks(1)
        tape.flush()
    assert len(tape) == 12
    tape.truncate(6)  # in the middle of the second segment
    tape.append_record(b"new")
    tape.close()
    again = S3Tape(client, location, "T1", tmp_path)
    assert len(again) == 7
    assert again.filemark_count() == 1
    assert again.read(5) == record(11, 500) and again.read(6) == b"new"
    again.truncate(4)  # at a segment's start: that segment goes whole
    again.close()
    assert len(S3Tape(client, location, "T1", tmp_path)) == 4


def test_a_full_tape_refuses_the_record(client, location, tmp_path) -> None:
    tape = new_tape(client, location, tmp_path, capacity=64 << 10)
    tape.append_record(bytes(40 << 10))
    with pytest.raises(MediumFull):
        tape.append_record(bytes(40 << 10))
    assert len(tape) == 1


def test_the_store_makes_lists_and_exports_cartridges(location, tmp_path) -> None:
    store = S3TapeStore(tmp_path / "lib", 1 << 20, location)
    store.create("A1")
    store.create("B2", 2 << 20)
    assert store.barcodes() == ["A1", "B2"]
    with store.open("A1") as tape:
        tape.append_record(bytes(1000))
    assert store.usage("A1") == (ENTRY_SIZE + 1000, 1 << 20)
    assert store.usage("B2") == (0, 2 << 20)
    assert store.export("A1").endswith("exported/A1/")
    assert store.barcodes() == ["B2"] and store.exported("A1") and not store.exists("A1")
    with pytest.raises(TapeImageError):
        store.open("A1")


def test_a_record_copied_in_from_a_file_is_shown_to_the_copy_managers_digest(
    client, location, tmp_path
) -> None:
    """A backup's digest (xcopy.digests) is fed what was appended, in order."""
    tape = new_tape(client, location, tmp_path / "spool")
    source = tmp_path / "volume"
    payload = record(7, 3 << 20)
    source.write_bytes(bytes(100) + payload)
    seen: list[bytes] = []
    fd = os.open(source, os.O_RDONLY)
    try:
        tape.append_record_from(fd, 100, len(payload), step=1 << 20, observe=seen.append)
    finally:
        os.close(fd)
    assert seen == [payload] and tape.read(0) == payload
    tape.close()


class CountsGets:
    """The real client, counting ranged GETs."""

    def __init__(self, client) -> None:
        self.client, self.gets = client, []

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def get_object(self, **kw):
        if "Range" in kw:
            self.gets.append(kw["Range"])
        return self.client.get_object(**kw)


def test_reads_come_a_window_at_a_time_and_the_next_is_read_ahead(
    client, location, tmp_path
) -> None:
    tape = new_tape(client, location, tmp_path)
    sizes = [100_000] * 30 + [3 << 20] + [100_000] * 10  # one record bigger than a window
    for i, size in enumerate(sizes):
        tape.append_record(record(i, size))
        if i == 20:
            tape.append_filemarks(1)  # a second segment from here
            tape.flush()
    tape.close()
    counting = CountsGets(client)
    again = S3Tape(counting, location, "T1", tmp_path, read_ahead=1 << 20)
    objects = [i for i in range(len(again)) if not again.is_filemark(i)]
    assert [again.read(i) for i in objects] == [record(i, n) for i, n in enumerate(sizes)]
    # About one GET per MiB of records (ten records a window), the big record in its own,
    # a window at each segment's end cut short: not one GET per record.
    assert len(counting.gets) <= 14, counting.gets
    assert again._reader is not None  # the windows after the first were read ahead


def test_the_store_sweeps_uploads_no_journal_claims(client, location, tmp_path) -> None:
    store = S3TapeStore(tmp_path / "lib", 1 << 30, location)
    store.create("A1")
    store.create("B2")
    tape = store.open("A1")  # a writer of ours that crashed: its journal is here
    tape.first_part = MIN_PART
    for i in range(3):
        tape.append_record(record(i, 3 << 20))
    crash(tape)
    stale = f"{location.prefix}B2/seg-00000004"
    client.create_multipart_upload(Bucket="tapes", Key=stale)
    assert sorted(uploads(client, location)) == [f"{location.prefix}A1/seg-00000001", stale]
    assert store.sweep() == [stale]
    assert uploads(client, location) == [f"{location.prefix}A1/seg-00000001"]
    with store.open("A1") as again:  # mended on opening, as before the sweep
        assert [again.read(i) for i in range(3)] == [record(i, 3 << 20) for i in range(3)]


class FailsOnce:
    """The real client, but one call of ``name`` fails (the bucket away for a moment)."""

    def __init__(self, client, name: str) -> None:
        self.client, self.name, self.failed = client, name, False

    def __getattr__(self, name: str):
        call = getattr(self.client, name)
        if name != self.name or self.failed:
            return call

        def fail(**kw):
            self.failed = True
            raise ConnectionError("the bucket is away")

        return fail


@pytest.mark.parametrize("failing", ["complete_multipart_upload", "put_object"])
def test_a_sync_point_that_fails_can_be_tried_again(
    client, location, tmp_path, failing: str
) -> None:
    create_tape(client, location, "T1", 1 << 30)
    flaky = FailsOnce(client, failing)  # completing the upload, or writing the index
    tape = S3Tape(flaky, location, "T1", tmp_path, first_part=MIN_PART)
    for i in range(3):
        tape.append_record(record(i, 3 << 20))
    with pytest.raises(MediumWriteError):
        tape.flush()  # the last part went up; completing or indexing failed
    tape.append_record(record(3, 3 << 20))  # the host writes on after the error
    tape.flush()
    tape.close()
    again = S3Tape(client, location, "T1", tmp_path)
    assert [again.read(i) for i in range(4)] == [record(i, 3 << 20) for i in range(4)]
    assert again.used == 4 * (ENTRY_SIZE + (3 << 20))
