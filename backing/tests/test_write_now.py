"""The synchronous small write (backing/write_now.py): what takes it, and what never does."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from backing.pairs import PairVolume, Role
from backing.sparse_file import INLINE_WRITE_MAX, SparseFile
from backing.write_now import read_now_of, write_now_of

SIZE = 4 << 20


def on_disk(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def test_a_small_write_is_made_at_once_and_a_large_one_is_left_to_write(tmp_path: Path) -> None:
    store = SparseFile(tmp_path / "a.img", SIZE)
    assert store.write_now(8192, memoryview(b"s" * 4096)) is True
    assert on_disk(store.path, 8192, 4096) == b"s" * 4096
    large = memoryview(b"L" * (INLINE_WRITE_MAX + 512))
    assert store.write_now(1 << 20, large) is False
    assert on_disk(store.path, 1 << 20, len(large)) == bytes(len(large))  # nothing written


class _OwnWrite(SparseFile):
    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        await super().write(offset, data, fua=fua)


def test_a_store_that_overrides_write_gets_no_fast_path(tmp_path: Path) -> None:
    # Every write must reach an override (a failing or checking store): none bypasses it.
    plain = SparseFile(tmp_path / "a.img", SIZE)
    assert write_now_of(plain) is not None
    assert write_now_of(_OwnWrite(tmp_path / "b.img", SIZE)) is None
    patched = SparseFile(tmp_path / "c.img", SIZE)
    patched.write = plain.write  # type: ignore[method-assign]
    assert write_now_of(patched) is None
    assert write_now_of(object()) is None


def test_a_volume_in_a_pair_never_writes_at_once(tmp_path: Path) -> None:
    # A paired volume's host writes go through its pairs (copy-before-write, bitmaps).
    base = SparseFile(tmp_path / "v.img", SIZE)
    volume = PairVolume("t/lun0", base)
    data = memoryview(b"p" * 4096)
    pair: Any = SimpleNamespace(name="p")
    for role in (Role.SOURCE, Role.TARGET):
        volume.attach(pair, role)
        assert volume.write_now(0, data) is False
        assert on_disk(base.path, 0, 4096) == bytes(4096)
        volume.detach()
    assert volume.write_now(0, data) is True
    assert on_disk(base.path, 0, 4096) == b"p" * 4096
    assert volume.write_now(0, memoryview(b"q" * (INLINE_WRITE_MAX + 512))) is False


def test_a_cached_read_is_filled_at_once(tmp_path: Path) -> None:
    store = SparseFile(tmp_path / "a.img", SIZE)
    store.write_now(4096, memoryview(b"r" * 4096))
    buf = bytearray(8192)
    assert store.read_now(0, memoryview(buf)) is True  # written just now: in the page cache
    assert buf == bytes(4096) + b"r" * 4096


class _OwnRead(SparseFile):
    async def read_into(self, offset: int, buf: memoryview) -> None:
        await super().read_into(offset, buf)


def test_reads_of_a_store_that_overrides_read_into_or_of_a_paired_volume_wait(
    tmp_path: Path,
) -> None:
    assert read_now_of(SparseFile(tmp_path / "a.img", SIZE)) is not None
    assert read_now_of(_OwnRead(tmp_path / "b.img", SIZE)) is None
    volume = PairVolume("t/lun0", SparseFile(tmp_path / "v.img", SIZE))
    buf = memoryview(bytearray(512))
    assert volume.read_now(0, buf) is True
    pair: Any = SimpleNamespace(name="p")
    for role in (Role.SOURCE, Role.TARGET):  # read through the pair: merged or restored
        volume.attach(pair, role)
        assert volume.read_now(0, buf) is False
        volume.detach()
