"""Records whose payload the kernel copies in (``append_record_from``): same image format,
checksums of what landed, and nothing on the tape if the source is short."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backing.tape_image import TapeImage, create


def test_copied_records_read_back_and_survive_reopening(tmp_path: Path) -> None:
    source = tmp_path / "src"
    data = os.urandom(3 << 20)
    source.write_bytes(data)
    create(tmp_path / "t.img", 64 << 20)
    fd = os.open(source, os.O_RDONLY)
    try:
        with TapeImage(tmp_path / "t.img") as image:
            image.append_record(b"label")
            image.append_record_from(fd, 0, 2 << 20)
            image.append_record_from(fd, 2 << 20, 1 << 20)
            image.append_filemarks(1)
        with pytest.raises(OSError), TapeImage(tmp_path / "t.img") as image:
            image.append_record_from(fd, 3 << 20, 4096)  # past the source's end
    finally:
        os.close(fd)
    with TapeImage(tmp_path / "t.img", read_only=True) as image:
        assert len(image) == 4 and image.is_filemark(3)
        assert image.read(0) == b"label"
        assert image.read(1) + image.read(2) == data  # checksums verified by read()
