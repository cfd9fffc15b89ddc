"""SparseFile: sparse creation, holes reading as zeros, punching, extent maps, FUA."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from unittest import mock

import pytest

from backing import sparse_file
from backing.errors import MediumReadError, MediumWriteError, SpaceExhausted, classify
from backing.sparse_file import INLINE_WRITE_MAX, Extent, SparseFile

MiB = 1 << 20


def run(coro):
    return asyncio.run(coro)


def read(f: SparseFile, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    run(f.read_into(offset, memoryview(buf)))
    return bytes(buf)


def test_creates_sparse_file_of_the_asked_size(tmp_path: Path) -> None:
    path = tmp_path / "lun.img"
    with SparseFile(path, 64 * MiB) as f:
        assert f.size == 64 * MiB
        st = os.stat(path)
        assert st.st_size == 64 * MiB
        assert st.st_blocks == 0  # nothing allocated
        assert f.extents(0, 64 * MiB) == [Extent(0, 64 * MiB, False)]


def test_existing_longer_file_is_not_shrunk(tmp_path: Path) -> None:
    path = tmp_path / "lun.img"
    path.write_bytes(b"\x00" * 8192 + b"keep me")
    with SparseFile(path, 4096) as f:
        assert f.size == 4096
    assert path.read_bytes().endswith(b"keep me")


def test_existing_shorter_file_grows_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "lun.img"
    path.write_bytes(b"abc")
    with SparseFile(path, MiB) as f:
        assert read(f, 0, 4) == b"abc\0"
    assert os.stat(path).st_size == MiB


def test_read_only_rejects_a_short_file_and_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "lun.img"
    path.write_bytes(b"x" * 100)
    with pytest.raises(ValueError):
        SparseFile(path, MiB, read_only=True)
    with SparseFile(path, 100, read_only=True) as f:
        assert read(f, 0, 3) == b"xxx"
        with pytest.raises(OSError):
            run(f.write(0, b"y"))


def test_holes_read_zero_and_writes_round_trip(tmp_path: Path) -> None:
    with SparseFile(tmp_path / "lun.img", 8 * MiB) as f:
        assert read(f, 12345, 1000) == bytes(1000)
        small = os.urandom(4096)
        big = os.urandom(INLINE_WRITE_MAX + 4096)  # takes the executor path
        run(f.write(4096, small))
        run(f.write(MiB, memoryview(big)))
        assert read(f, 4096, 4096) == small
        assert read(f, MiB, len(big)) == big
        assert read(f, 0, 4096) == bytes(4096)


def test_read_falls_back_to_executor_when_not_cached(tmp_path: Path) -> None:
    with SparseFile(tmp_path / "lun.img", MiB) as f:
        run(f.write(0, b"z" * 8192))
        real = os.preadv
        calls: list[int] = []

        def nowait_refuses(fd, bufs, offset, flags=0):
            calls.append(flags)
            if flags & os.RWF_NOWAIT:
                raise BlockingIOError
            return real(fd, bufs, offset, flags)

        with mock.patch.object(sparse_file.os, "preadv", nowait_refuses):
            assert read(f, 0, 8192) == b"z" * 8192
        assert calls[0] == os.RWF_NOWAIT and 0 in calls[1:]


def test_short_nowait_read_is_completed(tmp_path: Path) -> None:
    with SparseFile(tmp_path / "lun.img", MiB) as f:
        data = os.urandom(8192)
        run(f.write(0, data))
        real = os.preadv

        def half(fd, bufs, offset, flags=0):
            if flags & os.RWF_NOWAIT:
                return real(fd, [bufs[0][:4096]], offset)
            return real(fd, bufs, offset)

        with mock.patch.object(sparse_file.os, "preadv", half):
            assert read(f, 0, 8192) == data


def test_punch_hole_reads_zero_and_unmaps(tmp_path: Path) -> None:
    with SparseFile(tmp_path / "lun.img", 4 * MiB) as f:
        run(f.write(0, b"\xaa" * (2 * MiB)))
        assert f.extents(0, 4 * MiB) == [Extent(0, 2 * MiB, True), Extent(2 * MiB, 2 * MiB, False)]
        run(f.punch_hole(MiB, 512 * 1024))
        assert read(f, MiB - 1, 3) == b"\xaa\0\0"
        assert read(f, MiB + 512 * 1024 - 1, 2) == b"\0\xaa"
        assert f.extents(0, 4 * MiB) == [
            Extent(0, MiB, True),
            Extent(MiB, 512 * 1024, False),
            Extent(MiB + 512 * 1024, 512 * 1024, True),
            Extent(2 * MiB, 2 * MiB, False),
        ]


def test_punch_unaligned_edges_are_zeroed(tmp_path: Path) -> None:
    with SparseFile(tmp_path / "lun.img", MiB) as f:
        run(f.write(0, b"\x11" * 65536))
        run(f.punch_hole(100, 20000))
        assert read(f, 0, 101) == b"\x11" * 100 + b"\0"
        assert read(f, 100, 20000) == bytes(20000)
        assert read(f, 20099, 2) == b"\0\x11"


def test_punch_falls_back_to_writing_zeros(tmp_path: Path) -> None:
    with SparseFile(tmp_path / "lun.img", MiB) as f:
        run(f.write(0, b"\x22" * 8192))
        with (
            mock.patch.object(sparse_file, "_fallocate", lambda *a: -1),
            mock.patch.object(sparse_file.ctypes, "get_errno", lambda: 95),
        ):
            run(f.punch_hole(1000, 5000))
        assert read(f, 0, 8192) == b"\x22" * 1000 + bytes(5000) + b"\x22" * 2192


def test_write_zeroes(tmp_path: Path) -> None:
    with SparseFile(tmp_path / "lun.img", MiB) as f:
        run(f.write(0, b"\x33" * 16384))
        run(f.write_zeroes(4096, 8192))
        assert read(f, 0, 16384) == b"\x33" * 4096 + bytes(8192) + b"\x33" * 4096


def test_extents_of_a_sub_range(tmp_path: Path) -> None:
    with SparseFile(tmp_path / "lun.img", 4 * MiB) as f:
        run(f.write(MiB, b"d" * MiB))
        assert f.extents(MiB // 2, MiB) == [
            Extent(MiB // 2, MiB // 2, False),
            Extent(MiB, MiB // 2, True),
        ]
        assert f.extents(3 * MiB, 4 * MiB) == [Extent(3 * MiB, MiB, False)]


def test_fua_write_uses_dsync_and_flush_syncs(tmp_path: Path) -> None:
    with SparseFile(tmp_path / "lun.img", MiB) as f:
        real = os.pwritev
        real_pwrite = os.pwrite
        flags_seen: list[int] = []

        def spy(fd, bufs, offset, flags=0):
            flags_seen.append(flags)
            return real(fd, bufs, offset, flags)

        def spy_pwrite(fd, data, offset):  # a small write without FUA: plain pwrite
            flags_seen.append(0)
            return real_pwrite(fd, data, offset)

        with (
            mock.patch.object(sparse_file.os, "pwritev", spy),
            mock.patch.object(sparse_file.os, "pwrite", spy_pwrite),
        ):
            run(f.write(0, b"f" * 512, fua=True))
            run(f.write(512, b"g" * 512))
        assert flags_seen == [os.RWF_DSYNC, 0]
        with mock.patch.object(sparse_file.os, "fdatasync", wraps=os.fdatasync) as sync:
            run(f.flush())
        sync.assert_called_once_with(f.fd)
        assert read(f, 0, 1024) == b"f" * 512 + b"g" * 512


def test_short_inline_write_is_completed(tmp_path: Path) -> None:
    """A regular file may take less than asked: the rest of a small write still lands."""
    with SparseFile(tmp_path / "lun.img", MiB) as f:
        real = os.pwrite
        data = os.urandom(4096)

        def short(fd, buf, offset):
            return real(fd, buf[:1000], offset)

        with mock.patch.object(sparse_file.os, "pwrite", short):
            run(f.write(8192, data))
        assert read(f, 8192, 4096) == data


def test_cancelled_threaded_write_still_finishes_before_the_task_ends(tmp_path: Path) -> None:
    """An aborted command's write must have landed (or not started) when abort completes."""
    import threading

    store = SparseFile(tmp_path / "c.img", 1 << 22)
    release = threading.Event()
    real = sparse_file._pwrite_all
    landed: list[bool] = []

    def slow_pwrite(*args: object) -> None:
        release.wait(5)
        real(*args)  # type: ignore[arg-type]
        landed.append(True)

    async def main() -> None:
        sparse_file._pwrite_all = slow_pwrite  # type: ignore[assignment]
        try:
            task = asyncio.ensure_future(store.write(0, b"x" * (1 << 20), fua=True))
            await asyncio.sleep(0.05)
            task.cancel()
            asyncio.get_running_loop().call_later(0.1, release.set)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert landed == [True]
        finally:
            sparse_file._pwrite_all = real

    asyncio.run(main())
    store.close()


# -- file systems without non-blocking reads, and failures of the file system -------------
def test_reads_and_writes_on_tmpfs(tmpfs) -> None:
    """tmpfs refuses preadv(RWF_NOWAIT) with EOPNOTSUPP: reads must still succeed."""
    where = tmpfs("16m")
    with SparseFile(where / "lun.img", 8 * MiB) as f:
        run(f.write(4096, b"tmpfs!" * 100))
        run(f.write(MiB, b"x" * (2 * INLINE_WRITE_MAX), fua=True))
        assert read(f, 4096, 600) == b"tmpfs!" * 100
        assert read(f, MiB, 2 * INLINE_WRITE_MAX) == b"x" * (2 * INLINE_WRITE_MAX)
        assert read(f, 0, 4096) == bytes(4096)
        run(f.flush())
    assert sparse_file.file_system_type(where) == sparse_file.TMPFS_MAGIC


def test_full_file_system_raises_space_exhausted(tmpfs) -> None:
    where = tmpfs("1m")
    with SparseFile(where / "lun.img", 64 * MiB) as f:
        with pytest.raises(SpaceExhausted) as info:
            run(f.write(8 * MiB, b"y" * (2 * MiB)))
        err = info.value
        assert err.errno == errno.ENOSPC
        assert (err.op, err.offset, err.length) == ("write", 8 * MiB, 2 * MiB)
        assert str(where / "lun.img") in str(err)
        # A small inline write that finds no room either is typed the same way.
        with pytest.raises(SpaceExhausted):
            for block in range(64):
                run(f.write(block * 65536, b"z" * 4096))


def test_classify_keeps_other_errors_as_they_are() -> None:
    assert type(classify(OSError(errno.EIO, "x"), "p", "read", 0, 1)) is MediumReadError
    assert type(classify(OSError(errno.EIO, "x"), "p", "write", 0, 1)) is MediumWriteError
    assert type(classify(OSError(errno.EIO, "x"), "p", "flush")) is MediumWriteError
    assert type(classify(OSError(errno.EDQUOT, "x"), "p", "write", 0, 1)) is SpaceExhausted
    other = OSError(errno.EBADF, "x")
    assert classify(other, "p", "write", 0, 1) is other
