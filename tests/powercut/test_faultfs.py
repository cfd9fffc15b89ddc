"""faultfs itself: after a power cut, what reads back through the mount is what the medium
holds, never data the cut dropped that the kernel's page cache still remembers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import FaultFS, mounted

SIZE = 1 << 20
PAGE = 4096


@pytest.fixture
def faultfs(tmp_path: Path) -> Iterator[FaultFS]:
    with mounted(tmp_path / "faultfs") as fs:
        yield fs


@pytest.mark.parametrize("tear_seed", [None, 7], ids=["cut", "tear"])
def test_a_restarted_reader_sees_the_medium_not_the_lost_page_cache(
    faultfs: FaultFS, tear_seed: int | None
) -> None:
    path = faultfs.mountpoint / "lun.img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, SIZE)  # a fixed size, as a LUN's file: the cut changes no attribute
        os.pwrite(fd, b"A" * 2 * PAGE, 0)
        os.fsync(fd)
        os.pwrite(fd, b"B" * PAGE, 0)  # never synced: the cut drops or tears it
        assert os.pread(fd, PAGE, 0) == b"B" * PAGE  # now in the kernel's page cache
    finally:
        os.close(fd)  # the writer dies (kill -9) before the power goes
    faultfs.cut(tear_seed=tear_seed)
    medium = (faultfs.disk / "lun.img").read_bytes()[: 2 * PAGE]
    assert medium[PAGE:] == b"A" * PAGE
    if tear_seed is None:
        assert medium[:PAGE] == b"A" * PAGE
    fd = os.open(path, os.O_RDONLY)  # the restarted daemon opens its file again
    try:
        assert os.pread(fd, 2 * PAGE, 0) == medium
    finally:
        os.close(fd)
