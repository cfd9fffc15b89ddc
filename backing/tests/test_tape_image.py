"""The tape image format: records, file marks, EOD, capacity, torn-tail recovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from crc32c import crc32c

from backing.tape_image import (
    ENTRY_SIZE,
    HEADER_SIZE,
    CorruptRecord,
    MediumFull,
    TapeImage,
    TapeImageError,
    create,
)

CAP = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> TapeImage:
    path = tmp_path / "t.img"
    create(path, CAP, early_warning=64 * 1024)
    return TapeImage(path)


def test_blank_image_is_header_only(tmp_path: Path) -> None:
    path = tmp_path / "t.img"
    create(path, CAP)
    assert path.stat().st_size == HEADER_SIZE
    with TapeImage(path) as img:
        assert len(img) == 0
        assert img.capacity == CAP
        assert img.early_warning == CAP // 32
        assert img.used == 0
        assert img.recovery.cut_bytes == 0


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "t.img"
    create(path, CAP)
    with pytest.raises(FileExistsError):
        create(path, CAP)


def test_records_and_filemarks_round_trip(image: TapeImage) -> None:
    image.append_record(b"abc")
    image.append_record(b"")
    assert image.append_filemarks(2) == 2
    image.append_record(b"x" * 1001)
    image.close()
    img = TapeImage(image.path)
    assert len(img) == 5
    assert [img.length(i) for i in range(5)] == [3, 0, None, None, 1001]
    assert img.read(0) == b"abc"
    assert img.read(4) == b"x" * 1001
    assert img.filemark_count() == 2
    assert img.filemarks_before(4) == 2
    assert img.filemarks_before(3) == 1
    assert img.filemark_index(1) == 3
    assert img.used == 5 * ENTRY_SIZE + 3 + 1001
    assert img.recovery.cut_bytes == 0


def test_truncate_makes_a_new_end_of_data(image: TapeImage) -> None:
    for i in range(4):
        image.append_record(bytes([i]) * 10)
    image.append_filemarks(1)
    image.truncate(2)
    assert len(image) == 2 and image.filemark_count() == 0
    image.append_record(b"new")
    image.close()
    img = TapeImage(image.path)
    assert [img.read(i) for i in range(3)] == [b"\0" * 10, b"\1" * 10, b"new"]
    assert img.path.stat().st_size == HEADER_SIZE + 3 * ENTRY_SIZE + 23


@pytest.mark.parametrize("keep", [0, 1, 5, ENTRY_SIZE - 1, ENTRY_SIZE, ENTRY_SIZE + 99])
def test_torn_tail_is_cut_back_to_the_last_whole_record(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        img.append_record(b"first")
        img.append_filemarks(1)
        good_end = HEADER_SIZE + img.used
        img.append_record(b"y" * 100)
    os.truncate(path, good_end + keep)
    with TapeImage(path) as img:
        assert len(img) == 2
        assert img.recovery.cut_bytes == keep
        assert img.read(0) == b"first"
        assert img.is_filemark(1)
    assert path.stat().st_size == good_end


def test_garbled_last_payload_is_cut(tmp_path: Path) -> None:
    """The header made it to disk but the payload did not (page cache reordering)."""
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        img.append_record(b"keep me")
        end = HEADER_SIZE + img.used
        img.append_record(b"z" * 64)
    with path.open("r+b") as f:
        f.seek(end + ENTRY_SIZE)
        f.write(bytes(64))
    with TapeImage(path) as img:
        assert len(img) == 1 and img.read(0) == b"keep me"
        assert img.recovery.cut_bytes == ENTRY_SIZE + 64


def test_garbled_header_in_the_tail_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        img.append_record(b"a")
        end = HEADER_SIZE + img.used
        img.append_record(b"b")
    with path.open("r+b") as f:
        f.seek(end + 4)
        f.write(b"\xff")  # the length field
    with TapeImage(path) as img:
        assert len(img) == 1


def test_corrupt_record_in_the_middle_is_reported_on_read(tmp_path: Path) -> None:
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        img.append_record(b"a" * 50)
        img.append_record(b"b" * 50)
    with path.open("r+b") as f:
        f.seek(HEADER_SIZE + ENTRY_SIZE + 10)
        f.write(b"!")
    with TapeImage(path) as img:
        assert len(img) == 2
        with pytest.raises(CorruptRecord):
            img.read(0)
        assert img.read(1) == b"b" * 50


def test_full_medium_refuses_and_keeps_the_image(tmp_path: Path) -> None:
    path = tmp_path / "t.img"
    create(path, 64 * 1024, early_warning=8 * 1024)
    with TapeImage(path) as img:
        record = b"r" * (4096 - ENTRY_SIZE)
        for _ in range(13):
            img.append_record(record)
        assert not img.in_early_warning()
        img.append_record(record)
        assert img.in_early_warning()  # 14 of 16 slots: the last 8 KiB are the zone
        img.append_record(record)
        img.append_record(record)
        assert img.free == 0
        with pytest.raises(MediumFull):
            img.append_record(b"1")
        assert img.append_filemarks(3) == 0
        size = path.stat().st_size
    assert size == HEADER_SIZE + 64 * 1024
    with TapeImage(path) as img:
        assert len(img) == 16 and img.recovery.cut_bytes == 0


def test_filemarks_partially_fit(tmp_path: Path) -> None:
    path = tmp_path / "t.img"
    create(path, 64 * 1024, early_warning=1024)
    with TapeImage(path) as img:
        img.append_record(b"q" * (64 * 1024 - 3 * ENTRY_SIZE))
        assert img.append_filemarks(5) == 2
        assert img.free == 0


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(TapeImageError):
        TapeImage(path)
    path.write_bytes(b"")
    with pytest.raises(TapeImageError):
        TapeImage(path)


def test_read_only_open_does_not_cut(tmp_path: Path) -> None:
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        img.append_record(b"a")
    with path.open("ab") as f:
        f.write(b"torn")
    size = path.stat().st_size
    with TapeImage(path, read_only=True) as img:
        assert len(img) == 1 and img.recovery.cut_bytes == 4
        with pytest.raises(PermissionError):
            img.append_record(b"b")
    assert path.stat().st_size == size


def test_runs_of_filemarks_are_indexed_on_opening(tmp_path: Path) -> None:
    """Opening recognises runs of marks in bulk (longer than one read-ahead of the scan,
    and cut by records), with the same index a mark-by-mark walk would build."""
    path = tmp_path / "t.img"
    create(path, 8 << 20)
    runs = [1, 3, 70_000, 2, 65_536]
    with TapeImage(path) as img:
        for n, marks in enumerate(runs):
            img.append_record(bytes([n]) * (n + 1))
            assert img.append_filemarks(marks) == marks
        img.append_record(b"last")
        expected = [img.length(i) for i in range(len(img))]
    with TapeImage(path) as img:
        assert img.recovery.cut_bytes == 0
        assert [img.length(i) for i in range(len(img))] == expected
        assert img.filemark_count() == sum(runs)
        assert img.filemark_index(3) == 5  # record, mark, record, 3 marks: the 4th mark
        assert img.read(len(img) - 1) == b"last"
        assert img.used == len(img) * ENTRY_SIZE + sum(n + 1 for n in range(len(runs))) + 4


@pytest.mark.parametrize("keep", [1, ENTRY_SIZE - 1])
def test_torn_mark_at_the_end_of_a_run_is_cut(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        img.append_record(b"data")
        img.append_filemarks(1000)
        good_end = HEADER_SIZE + img.used
        img.append_filemarks(1)
    os.truncate(path, good_end + keep)
    with TapeImage(path) as img:
        assert len(img) == 1001 and img.filemark_count() == 1000
        assert img.recovery.cut_bytes == keep
    assert path.stat().st_size == good_end


def test_flush_syncs_only_what_was_written(
    image: TapeImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A REWIND or LOCATE on an unchanged tape costs no fdatasync (a sync of a large image
    under write-back can take most of a second)."""
    syncs: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])
    image.append_record(b"x")
    image.flush()
    image.flush()
    assert len(syncs) == 1
    image.append_filemarks(2)
    image.flush()
    assert len(syncs) == 2


def test_opening_reads_headers_not_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening reads each record's header (and the last record, for its checksum), not the
    records between: a tape of large records opens without reading the tape."""
    path = tmp_path / "t.img"
    create(path, 64 << 20)
    with TapeImage(path) as img:
        for n in range(10):
            img.append_record(bytes([n]) * (4 << 20))
        img.append_filemarks(1)
        img.append_record(b"last")
    read: list[int] = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: (read.append(n), real(fd, n, off))[1])
    with TapeImage(path) as img:
        assert len(img) == 12 and img.length(3) == 4 << 20
    assert sum(read) < 256 << 10


def _crashed_copy(img: TapeImage, to: Path, *, garble: int | None = None) -> Path:
    """What a power cut leaves of an image still open (no close, so no last sync), with
    the payload of record ``garble`` torn."""
    data = bytearray(img.path.read_bytes())
    if garble is not None:
        at = img._offsets[garble] + ENTRY_SIZE
        data[at : at + 7] = b"\xde\xad\xbe\xef\xde\xad\xbe"
    to.write_bytes(data)
    return to


def test_torn_earlier_unsynced_record_cuts_the_tape_there(tmp_path: Path) -> None:
    """A power cut tears any record written since the last sync, not only the last: the
    tape ends before the first torn one, and nothing after it is kept."""
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        img.append_record(b"a" * 300)
        img.append_filemarks(1)
        img.flush()  # durable up to here
        synced = HEADER_SIZE + img.used
        for fill in b"bcd":
            img.append_record(bytes([fill]) * 300)
        crashed = _crashed_copy(img, tmp_path / "crashed.img", garble=2)  # "b", not "d"
    with TapeImage(crashed) as img:
        assert len(img) == 2 and img.is_filemark(1)
        assert img.read(0) == b"a" * 300
        assert img.recovery.cut_bytes == 3 * (ENTRY_SIZE + 300)
    assert crashed.stat().st_size == synced


def test_overwriting_below_the_marker_lowers_it_first(tmp_path: Path) -> None:
    """Records written over a synced part of the tape (rewind, write) are checked on
    opening too: the marker came down, on disk, before they were written."""
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        for fill in b"abc":
            img.append_record(bytes([fill]) * 300)
        img.flush()
        img.truncate(1)
        img.append_record(b"x" * 300)
        img.append_record(b"y" * 300)
        crashed = _crashed_copy(img, tmp_path / "crashed.img", garble=1)  # "x"
    with TapeImage(crashed) as img:
        assert len(img) == 1 and img.read(0) == b"a" * 300


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    read: list[int] = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: (read.append(n), real(fd, n, off))[1])
    return read


def test_image_without_a_marker_is_checked_whole_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image from before the marker (its bytes zero) has no known durable point: every
    record is checked, the tape ends before a torn one, and the marker then written saves
    the next opening the check."""
    path = tmp_path / "t.img"
    create(path, 64 << 20)
    with TapeImage(path) as img:
        for n in range(4):
            img.append_record(bytes([n]) * (1 << 20))
        second = img._offsets[1]
    with path.open("r+b") as f:
        head = path.read_bytes()[:32] + bytes(28)  # no marker, as an older targetd wrote it
        f.write(head + crc32c(head).to_bytes(4, "big"))
        f.seek(second + ENTRY_SIZE + 5)
        f.write(b"!")
    read = _count_reads(monkeypatch)
    with TapeImage(path) as img:
        assert len(img) == 1 and img.read(0) == bytes(1 << 20)
    assert sum(read) > 2 << 20  # records 0 and 1 were read whole
    read.clear()
    with TapeImage(path) as img:
        assert len(img) == 1
    assert sum(read) < 64 << 10 + (1 << 20)  # headers, and the last record only


def test_an_older_targetd_still_reads_the_header(tmp_path: Path) -> None:
    """Moving the marker rewrites the header's CRC: the check an older targetd makes (a
    CRC32C of the first 60 bytes) still holds."""
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        img.append_record(b"a" * 100)
        img.flush()
        head = path.read_bytes()[:HEADER_SIZE]
        assert head[32:40] == (HEADER_SIZE + img.used).to_bytes(8, "big")
        assert head[60:] == crc32c(head[:60]).to_bytes(4, "big")


@pytest.mark.parametrize("at", [34, 41, 62])  # the offset, its CRC, the header CRC
def test_a_torn_marker_only_makes_opening_check_more(tmp_path: Path, at: int) -> None:
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        img.append_record(b"a" * 100)
        img.append_record(b"b" * 100)
    with path.open("r+b") as f:
        f.seek(at)
        f.write(b"\xff")
    with TapeImage(path, read_only=True) as img:
        assert len(img) == 2 and img.read(1) == b"b" * 100


def test_a_marker_outside_the_header_crc_is_read(tmp_path: Path) -> None:
    """The first images with a marker kept it out of the header CRC (taken as zeros)."""
    path = tmp_path / "t.img"
    create(path, CAP)
    with TapeImage(path) as img:
        img.append_record(b"a" * 100)
        img.append_record(b"b" * 100)
        end = HEADER_SIZE + img.used
    head = bytearray(path.read_bytes()[:HEADER_SIZE])
    head[32:64] = end.to_bytes(8, "big") + crc32c(end.to_bytes(8, "big")).to_bytes(4, "big")
    head[44:] = bytes(16) + crc32c(bytes(head[:32]) + bytes(28)).to_bytes(4, "big")
    with path.open("r+b") as f:
        f.write(head)
        f.seek(HEADER_SIZE + ENTRY_SIZE + 3)
        f.write(b"!")  # before the marker: not checked on opening, only on reading
    with TapeImage(path, read_only=True) as img:
        assert len(img) == 2 and img.read(1) == b"b" * 100
        with pytest.raises(CorruptRecord):
            img.read(0)
