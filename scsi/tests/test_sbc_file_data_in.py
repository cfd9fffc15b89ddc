"""Which READs answer with a FileRange (sent from the file with sendfile) and which with
bytes: only when the transport asks, from 64 KiB, with every page cached, and from a plain
file or a pair's source outside a reverse resync, never from a pair's target."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_sbc_support import NEXUS, cdb16

from backing.pairs.states import Phase
from backing.pairs.volume import PairVolume, Role
from backing.sparse_file import SparseFile
from scsi.block_device import BlockDevice
from scsi.command import FileRange, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import Identity

MiB = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
]  # fmt: skip
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def read(lu: BlockDevice, lba: int, blocks: int, *, file_data_in: bool = True) -> ScsiResult:
    cmd = ScsiCommand(
        cdb=cdb16(0x88, lba, blocks), lun=0, nexus=NEXUS, data_in_length=blocks * 512,
        file_data_in=file_data_in,
    )  # fmt: skip
    return asyncio.run(lu.execute(cmd))


def volume_lu(tmp_path: Path) -> tuple[BlockDevice, PairVolume, SparseFile]:
    store = SparseFile(tmp_path / "v.img", 4 * MiB)
    os.pwrite(store.fd, os.urandom(4 * MiB), 0)  # written through the page cache: cached
    volume = PairVolume("v", store)
    return BlockDevice(Identity("v"), volume), volume, store


def test_a_cached_large_read_is_a_range_of_the_file(tmp_path: Path) -> None:
    lu, _, store = volume_lu(tmp_path)
    result = read(lu, 3, 2048)
    assert result.status == Status.GOOD
    assert result.data == FileRange(store, 3 * 512, MiB)
    small = read(lu, 0, 127)  # under 64 KiB: bytes
    assert isinstance(small.data, bytearray) and len(small.data) == 127 * 512
    asked_not = read(lu, 0, 2048, file_data_in=False)
    assert isinstance(asked_not.data, bytearray)
    assert bytes(asked_not.data) == os.pread(store.fd, MiB, 0)


@contextmanager
def pinned(store: SparseFile, length: int) -> Iterator[None]:
    """The file's first ``length`` bytes in the page cache and kept there (mlock(2) of a
    shared mapping of them): on a machine short of memory the kernel may otherwise evict
    them between the test making them cached and the READ looking."""
    addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, store.fd, 0)
    assert addr != _MAP_FAILED, os.strerror(ctypes.get_errno())
    try:
        assert _libc.mlock(addr, length) == 0, os.strerror(ctypes.get_errno())
        yield
    finally:
        _libc.munmap(addr, length)  # unlocks too


def test_uncached_pages_are_read_into_a_buffer(tmp_path: Path) -> None:
    store = SparseFile(tmp_path / "u.img", 4 * MiB)
    data = os.urandom(MiB)
    os.pwrite(store.fd, data, 0)
    os.fsync(store.fd)  # clean pages, which DONTNEED drops
    os.posix_fadvise(store.fd, 0, 0, os.POSIX_FADV_DONTNEED)
    assert not store.cached(0, MiB)  # nobody else reads this file: they stay out
    lu = BlockDevice(Identity("u"), store)
    first = read(lu, 0, 2048)
    assert isinstance(first.data, bytearray) and first.data == data
    with pinned(store, MiB):
        assert read(lu, 0, 2048).data == FileRange(store, 0, MiB)


@pytest.mark.parametrize(
    ("role", "phase", "from_file"),
    [
        (Role.SOURCE, Phase.DUPLEX, True),
        (Role.SOURCE, Phase.SPLIT_PENDING, True),
        (Role.SOURCE, Phase.SPLIT, True),
        (Role.SOURCE, Phase.REVERSE_COPY, False),
        (Role.TARGET, Phase.SPLIT, False),
        (Role.TARGET, Phase.SPLIT_PENDING, False),
        (Role.TARGET, Phase.DUPLEX, False),
    ],
)
def test_pair_volumes(tmp_path: Path, role: Role, phase: Phase, from_file: bool) -> None:
    lu, volume, store = volume_lu(tmp_path)
    volume.role = role
    volume.pairs = [SimpleNamespace(phase=phase)]  # type: ignore[list-item]
    assert (lu.file_range(0, MiB) is not None) == from_file
    if from_file:
        assert read(lu, 0, 2048).data == FileRange(store, 0, MiB)


@pytest.mark.parametrize(
    ("role", "phase", "plain"),
    [
        (Role.SOURCE, Phase.DUPLEX, True),
        (Role.SOURCE, Phase.REVERSE_COPY, False),  # chunks still to restore are the target's
        (Role.TARGET, Phase.SPLIT, True),
        (Role.TARGET, Phase.SPLIT_PENDING, False),
    ],
)
def test_kernel_copies_read_a_pair_volume_file_only_when_it_is_the_image(
    tmp_path: Path, role: Role, phase: Phase, plain: bool
) -> None:
    lu, volume, _ = volume_lu(tmp_path)
    volume.role = role
    volume.pairs = [SimpleNamespace(phase=phase)]  # type: ignore[list-item]
    assert (lu.kernel_readable() is not None) == plain
