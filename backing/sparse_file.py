"""A sparse file as a block store: positional reads and writes, flush, holes, extent maps.

This module knows nothing of SCSI. Offsets and lengths are in bytes.

Where the work runs (measured on this machine: ext4, 2 cores, uvloop, warm page cache;
µs per call)::

    size      pwritev inline   pwritev in executor   preadv RWF_NOWAIT inline
    4 KiB          2-6               93-117                  1.2-1.7
    64 KiB        12-14             109-139                 11-13
    256 KiB       52-56             168-231                 32-35
    1 MiB        132-241            250-417                 60-104
    1 MiB, first touch of a hole: inline 240-1530, executor 380-420

A thread hop costs ~100 µs here, more than a cached copy of up to a few hundred KiB, so
small writes run inline on the event loop. Large writes go to the executor: their cost
varies (block allocation, dirty-page throttling can stall for milliseconds) and while a
worker copies one, the loop keeps receiving the next. RWF_NOWAIT on buffered writes gives
EOPNOTSUPP on ext4, hence the size threshold instead. Reads try ``preadv(RWF_NOWAIT)``
inline, which either completes from the page cache or refuses at once, and only a page
cache miss goes to the executor. File systems without non-blocking reads (tmpfs, FUSE, and
overlayfs here) refuse RWF_NOWAIT with EOPNOTSUPP: on tmpfs, whose pages are memory, reads then
run inline without the flag; elsewhere they go to the executor.

Failures the host must be told about apart (a full file system, EIO) are raised as the typed
errors of :mod:`backing.errors`, naming the file, the operation and the byte range.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import mmap
import os
from pathlib import Path
from typing import NamedTuple

from backing.errors import classify
from backing.threads import outlast

# Writes up to this size run inline on the event loop (see the table above).
INLINE_WRITE_MAX = 128 * 1024
# Zeroes written per call where the file system cannot punch or zero a range.
_ZERO_CHUNK = 1 << 20

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int
_statfs = _libc.statfs
_statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_statfs.restype = ctypes.c_int

_syscall = _libc.syscall
# Declared, so that every argument goes as a full register (syscall(2) reads longs).
_syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong]
_syscall.restype = ctypes.c_long
# cachestat(2) (Linux 6.5): how many pages of a range are in the page cache. The same number
# on every architecture (the generic system call table).
_SYS_CACHESTAT = 451


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    ]


_PAGE = mmap.PAGESIZE
_cachestat_works = True

TMPFS_MAGIC = 0x01021994
# How read_into reads: try RWF_NOWAIT inline, read inline (memory-backed file systems), or
# always hand the read to a worker thread.
_NOWAIT, _INLINE, _THREAD = "nowait", "inline", "thread"


def file_system_type(path: Path) -> int:
    """``f_type`` of statfs(2) for ``path`` (0 when it cannot be had)."""
    # struct statfs starts with a word-sized f_type on every Linux ABI Python runs on.
    buf = ctypes.create_string_buffer(256)
    if _statfs(os.fsencode(path), buf) != 0:
        return 0
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_long)], "little")


class Extent(NamedTuple):
    """A run of bytes that is either mapped (holds data) or a hole."""

    offset: int
    length: int
    mapped: bool


def _fallocate_or_raise(fd: int, mode: int, offset: int, length: int) -> None:
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _pwrite_all(fd: int, data: memoryview, offset: int, flags: int = 0) -> None:
    """pwritev until every byte is written (a regular file may still write short)."""
    while data:
        n = os.pwritev(fd, [data], offset, flags) if flags else os.pwritev(fd, [data], offset)
        data = data[n:]
        offset += n


def _pread_all(fd: int, buf: memoryview, offset: int) -> None:
    """preadv until ``buf`` is full; bytes past the end of the file read as zeros."""
    while buf:
        n = os.preadv(fd, [buf], offset)
        if n == 0:
            buf[:] = bytes(len(buf))
            return
        buf = buf[n:]
        offset += n


class SparseFile:
    """A file of ``size`` bytes whose unwritten and punched ranges are holes reading as zeros.

    The file is created (sparse, by ``ftruncate``) when absent and grown when shorter than
    ``size``; an existing longer file is left as it is (``size`` stays what was asked for,
    so no data past it is lost). One descriptor is kept open for the object's life; all
    I/O is positional, so concurrent calls never share a file offset.
    """

    def __init__(self, path: Path, size: int, *, read_only: bool = False) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, not {size}")
        self.path = Path(path)
        self.size = size
        self.read_only = read_only
        flags = os.O_RDONLY if read_only else os.O_RDWR | os.O_CREAT
        self._fd = os.open(self.path, flags | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(self._fd).st_size < size:
                if read_only:
                    raise ValueError(f"{self.path} is shorter than {size} bytes")
                os.ftruncate(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise
        self._read_mode = _NOWAIT

    def grow(self, size: int) -> None:
        """Make the file ``size`` bytes (larger than now): the new range is a hole, so
        growing costs no space. A read-only file must already be that long (someone else
        grew it); one longer than ``size`` is left as it is, as at start."""
        if size <= self.size:
            raise ValueError(f"{self.path}: {size} bytes is not larger than {self.size}")
        if os.fstat(self._fd).st_size < size:
            if self.read_only:
                raise ValueError(f"{self.path} is read-only and shorter than {size} bytes")
            os.ftruncate(self._fd, size)
        self.size = size

    @property
    def fd(self) -> int:
        return self._fd

    # -- data path -----------------------------------------------------------------
    async def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset``; holes read as zeros."""
        n = 0
        try:
            if self._read_mode == _NOWAIT:
                n = self._read_nowait(offset, buf)
            elif self._read_mode == _INLINE:
                _pread_all(self._fd, buf, offset)
                return
            if n == len(buf):
                return
            await asyncio.get_running_loop().run_in_executor(
                None, _pread_all, self._fd, buf[n:], offset + n
            )
        except OSError as exc:
            raise classify(exc, str(self.path), "read", offset, len(buf)) from exc

    def read_now(self, offset: int, buf: memoryview) -> bool:
        """Fill ``buf`` at once if the page cache holds all of it (or the file system's
        reads never wait): True when filled, False to await :meth:`read_into`. No
        coroutine: the small cached read's hot path."""
        try:
            if self._read_mode == _NOWAIT:
                return self._read_nowait(offset, buf) == len(buf)
            if self._read_mode == _INLINE:
                _pread_all(self._fd, buf, offset)
                return True
        except OSError as exc:
            raise classify(exc, str(self.path), "read", offset, len(buf)) from exc
        return False

    def _read_nowait(self, offset: int, buf: memoryview) -> int:
        """Bytes read from the page cache without blocking (0 on a miss)."""
        try:
            return os.preadv(self._fd, [buf], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
        # Decided once per file: this file system has no non-blocking buffered reads.
        memory = file_system_type(self.path) == TMPFS_MAGIC
        self._read_mode = _INLINE if memory else _THREAD
        return 0

    def cached(self, offset: int, length: int) -> bool:
        """Whether every page of ``[offset, offset+length)`` is in the page cache, so that
        sendfile(2) from it will not wait for the disk (cachestat(2); False where the kernel
        has no cachestat)."""
        global _cachestat_works
        if not _cachestat_works or self._fd < 0:
            return False
        first = offset // _PAGE
        pages = -(-(offset + length) // _PAGE) - first
        rng = _CachestatRange(first * _PAGE, pages * _PAGE)
        stat = _Cachestat()
        if _syscall(_SYS_CACHESTAT, self._fd, ctypes.byref(rng), ctypes.byref(stat), 0) != 0:
            if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # old kernel, seccomp
                _cachestat_works = False
            return False
        return bool(stat.nr_cache >= pages)

    def write_now(self, offset: int, data: memoryview) -> bool:
        """Write ``data`` at ``offset`` at once, without FUA, if it is small enough to write
        on the event loop (see the table above): True when written, False (nothing done)
        when it must go through :meth:`write`. No coroutine: the small write's hot path."""
        if len(data) > INLINE_WRITE_MAX:
            return False
        try:
            # One pwrite: a short write (rare on a regular file) goes on in _pwrite_all.
            n = os.pwrite(self._fd, data, offset)
            if n < len(data):
                _pwrite_all(self._fd, data[n:], offset + n)
        except OSError as exc:
            raise classify(exc, str(self.path), "write", offset, len(data)) from exc
        return True

    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        """Write ``data`` at ``offset``; with ``fua``, on stable storage before returning."""
        view = data if isinstance(data, memoryview) else memoryview(data)
        if not fua and self.write_now(offset, view):
            return
        try:
            flags = os.RWF_DSYNC if fua else 0
            await outlast(
                asyncio.get_running_loop().run_in_executor(
                    None, _pwrite_all, self._fd, view, offset, flags
                )
            )
        except OSError as exc:
            raise classify(exc, str(self.path), "write", offset, len(view)) from exc

    async def flush(self) -> None:
        """Everything written so far reaches stable storage."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, os.fdatasync, self._fd)
        except OSError as exc:
            raise classify(exc, str(self.path), "flush") from exc

    # -- thin provisioning -----------------------------------------------------------
    async def punch_hole(self, offset: int, length: int) -> None:
        """Deallocate ``[offset, offset+length)``; it reads as zeros afterwards.

        The kernel zeroes partial blocks at unaligned edges itself; a file system that
        cannot punch gets zeros written instead.
        """
        await outlast(
            asyncio.get_running_loop().run_in_executor(
                None, self._deallocate, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length
            )
        )

    async def write_zeroes(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros, keeping it allocated if possible."""
        await outlast(
            asyncio.get_running_loop().run_in_executor(
                None, self._deallocate, _FALLOC_FL_ZERO_RANGE | _FALLOC_FL_KEEP_SIZE, offset, length
            )
        )

    def _deallocate(self, mode: int, offset: int, length: int) -> None:
        if length <= 0:
            return
        try:
            self._deallocate_range(mode, offset, length)
        except OSError as exc:
            raise classify(exc, str(self.path), "write", offset, length) from exc

    def _deallocate_range(self, mode: int, offset: int, length: int) -> None:
        try:
            _fallocate_or_raise(self._fd, mode, offset, length)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        if mode & _FALLOC_FL_ZERO_RANGE:
            try:
                _fallocate_or_raise(
                    self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length
                )
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
        zeros = memoryview(bytes(min(length, _ZERO_CHUNK)))
        end = offset + length
        while offset < end:
            chunk = zeros[: min(len(zeros), end - offset)]
            _pwrite_all(self._fd, chunk, offset)
            offset += len(chunk)

    def extents(self, offset: int, length: int) -> list[Extent]:
        """The mapped and unmapped runs covering ``[offset, offset+length)``, in order.

        Built from SEEK_DATA/SEEK_HOLE, so the granularity is the file system's; a range
        the file system cannot map (no SEEK_DATA support) is reported as one mapped run.
        """
        end = min(offset + length, max(self.size, offset))
        result: list[Extent] = []
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole from here to the end of file
                    data = end
                elif exc.errno == errno.EINVAL:
                    return [Extent(offset, end - offset, True)]
                else:
                    raise
            data = min(data, end)
            if data > pos:
                result.append(Extent(pos, data - pos, False))
                pos = data
                if pos >= end:
                    break
            hole = min(os.lseek(self._fd, pos, os.SEEK_HOLE), end)
            result.append(Extent(pos, hole - pos, True))
            pos = hole
        return result

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SparseFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SparseFile({str(self.path)!r}, size={self.size}, read_only={self.read_only})"
