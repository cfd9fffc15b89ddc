"""The file sink medium: one plain file per tape file, cut like a tape, capacity kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backing.file_sink import FileSink, SinkFull, list_files


def names(directory: Path) -> list[tuple[str, int]]:
    return [(f.path.name, f.size) for f in list_files(directory)]


def test_files_marks_rewind_and_read(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "s", 1 << 20)
    sink.write(b"abc")
    sink.write(b"defg")
    sink.write_filemarks(1)
    sink.write(b"second")
    sink.write_filemarks(2)  # the second mark leaves an empty file
    assert names(tmp_path / "s") == [
        ("file-0000.bin", 7),
        ("file-0001.bin", 6),
        ("file-0002.bin", 0),
    ]
    assert (tmp_path / "s" / "file-0000.bin").read_bytes() == b"abcdefg"
    sink.rewind()
    assert sink.read(5) == b"abcde"
    assert sink.read(5) == b"fg"
    assert sink.read(5) is None and not sink.at_end_of_data  # the mark, passed
    assert sink.read(100) == b"second"
    assert sink.read(1) is None
    assert sink.read(1) is None  # the empty file's mark
    assert sink.read(1) is None and sink.at_end_of_data
    sink.close()


def test_writing_mid_medium_cuts_it_there(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, 1 << 20)
    for data in (b"one", b"two", b"three"):
        sink.write(data)
        sink.write_filemarks(1)
    sink.rewind()
    assert sink.read(3) == b"one" and sink.read(1) is None
    sink.write(b"TWO!")
    sink.write_filemarks(1)
    assert names(tmp_path) == [("file-0000.bin", 3), ("file-0001.bin", 4)]
    reopened = FileSink(tmp_path, 1 << 20)
    assert reopened.sizes == [3, 4]


def test_capacity(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, 10)
    sink.write(b"12345678")
    with pytest.raises(SinkFull):
        sink.write(b"abc")
    sink.write(b"90")
    assert sink.used == 10


def test_many_marks_cost_one_directory_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data file is synced, then the empty files of the further marks are made and the
    directory is synced once for all their names (not one fsync per mark)."""
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1]
    )
    sink = FileSink(tmp_path / "s", 1 << 20)
    sink.write(b"data")
    sink.write_filemarks(1000)
    assert synced == [str(tmp_path / "s" / "file-0000.bin"), str(tmp_path / "s")]
    assert sink.file == 1000 and sink.sizes == [4] + [0] * 999
    assert FileSink(tmp_path / "s", 1 << 20).sizes == [4] + [0] * 999
    synced.clear()
    sink.write(b"more")  # a new file: its name is synced with it
    sink.write_filemarks(1)
    assert synced == [str(tmp_path / "s" / "file-1000.bin"), str(tmp_path / "s")]
    sink.close()
