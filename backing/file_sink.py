"""A file sink: a directory of plain files used like a tape, one file per tape file.

This module knows nothing of SCSI. Bytes written go to the end of the current file; a file
mark closes it (fsync) and the next write starts the next one, so after a backup that ends
with a file mark the directory holds ``file-0000.bin``, ``file-0001.bin`` ... each exactly
the bytes copied, ready for ``cmp`` against the volume. Writing anywhere but the end cuts
the medium there first, as a tape drive does. Record boundaries are not kept: reading gives
the bytes back in whatever pieces the reader asks for.

The position is (file number, byte offset); file number ``len(files)`` is end of data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backing.durable import sync_directory

_NAME = re.compile(r"file-(\d{4,})\.bin")


class SinkFull(Exception):
    """The write does not fit in the sink's capacity; nothing was written."""


@dataclass(frozen=True, slots=True)
class SinkFile:
    number: int
    path: Path
    size: int


def file_name(number: int) -> str:
    return f"file-{number:04d}.bin"


def list_files(directory: Path) -> list[SinkFile]:
    """The sink's files in order (numbered from 0 without gaps; a stray name ends it)."""
    found = {}
    if directory.is_dir():
        for entry in directory.iterdir():
            m = _NAME.fullmatch(entry.name)
            if m:
                found[int(m.group(1))] = entry
    out = []
    for n in range(len(found)):
        if n not in found:
            break
        out.append(SinkFile(n, found[n], found[n].stat().st_size))
    return out


class FileSink:
    """An open sink directory. All I/O is synchronous and positional and may wait on the
    disk: the caller runs it off the event loop, one command at a time, as for a tape."""

    def __init__(self, directory: Path, capacity: int, *, read_only: bool = False) -> None:
        self.directory = Path(directory)
        self.capacity = capacity
        self.read_only = read_only
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.sizes = [f.size for f in list_files(self.directory)]
        self.file = 0
        self.offset = 0
        # The file being written stays open between writes; None when no write is pending.
        self._fd: int | None = None
        self._fd_file = -1
        self._new_names = False  # files made since the directory was last synced

    # -- what is there --------------------------------------------------------------------
    @property
    def used(self) -> int:
        return sum(self.sizes)

    def path(self, number: int) -> Path:
        return self.directory / file_name(number)

    @property
    def at_end_of_data(self) -> bool:
        return self.file >= len(self.sizes)

    # -- writing ----------------------------------------------------------------------------
    def _cut_here(self) -> None:
        """Make the position the end of data: later files go, this one is cut."""
        self._check_writable()
        for n in range(len(self.sizes) - 1, self.file, -1):
            self.path(n).unlink(missing_ok=True)
        del self.sizes[self.file + 1 :]
        if self.file < len(self.sizes) and self.sizes[self.file] != self.offset:
            os.truncate(self.path(self.file), self.offset)
            self.sizes[self.file] = self.offset

    def write(self, data: bytes | memoryview) -> None:
        if self.used - self._tail() + len(data) > self.capacity:
            raise SinkFull(f"{len(data)} bytes do not fit in {self.capacity - self.used}")
        if self._fd is None or self._fd_file != self.file:
            self._cut_here()
            self._open_current()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self.offset)
            view = view[n:]
            self.offset += n
        self.sizes[self.file] = self.offset

    def copy_in(
        self,
        source_fd: int,
        source_offset: int,
        length: int,
        *,
        step: int = 0,
        between: Callable[[], None] | None = None,
        observe: Callable[[int, int, int], None] | None = None,
    ) -> None:
        """Append ``length`` bytes of another file, copied by the kernel (no trip through
        user space: copy_file_range), as ``write`` would append them. With ``step``, at
        most that many bytes per call, and ``between()`` after each. ``observe(fd,
        offset, length)`` is told where each slice landed, once it has."""
        if self.used - self._tail() + length > self.capacity:
            raise SinkFull(f"{length} bytes do not fit in {self.capacity - self.used}")
        if self._fd is None or self._fd_file != self.file:
            self._cut_here()
            self._open_current()
        assert self._fd is not None
        done = 0
        while done < length:
            want = min(step, length - done) if step > 0 else length - done
            n = os.copy_file_range(source_fd, self._fd, want, source_offset + done, self.offset)
            if n == 0:  # past the end of the source file (a sparse tail): zeros
                zeros = bytes(min(1 << 20, length - done))
                n = os.pwrite(self._fd, zeros, self.offset)
            done += n
            if observe is not None:
                observe(self._fd, self.offset, n)
            self.offset += n
            if between is not None and done < length:
                between()
        self.sizes[self.file] = self.offset

    def _tail(self) -> int:
        """Bytes past the position that a write here cuts away (they free capacity)."""
        if self.at_end_of_data:
            return 0
        return self.sizes[self.file] - self.offset + sum(self.sizes[self.file + 1 :])

    def _open_current(self) -> None:
        self.close_file()
        if self.file >= len(self.sizes):
            self.sizes.append(0)
            self.offset = 0
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC  # readable: a backup reads back its digest
        self._new_names |= not self.path(self.file).exists()
        self._fd = os.open(self.path(self.file), flags, 0o644)
        self._fd_file = self.file

    def write_filemarks(self, count: int) -> None:
        """Close the current file; each further mark leaves an empty file. Empty files need
        no sync of their own: one sync of the directory at the end makes them all durable."""
        self._check_writable()
        if not count:
            return
        if self._fd is None or self._fd_file != self.file:
            self._cut_here()
            if self.file >= len(self.sizes):  # a mark with no data before it: an empty file
                self._open_current()
        self._close_fd()
        self.file += 1
        self.offset = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        for _ in range(count - 1):
            os.close(os.open(self.path(self.file), flags, 0o644))
            self._new_names = True
            self.sizes.append(0)
            self.file += 1
        self._sync_directory()

    def flush(self) -> None:
        """Make the bytes written to the current file durable; the file stays open."""
        if self._fd is not None:
            os.fsync(self._fd)
        self._sync_directory()

    def close_file(self) -> None:
        self._close_fd()
        self._sync_directory()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._fd_file = -1

    def _sync_directory(self) -> None:
        """A new file's name is durable once its directory is synced (its data is not
        enough)."""
        if self._new_names:
            sync_directory(self.directory)
            self._new_names = False

    # -- reading and positioning --------------------------------------------------------------
    def read(self, length: int) -> bytes | None:
        """Up to ``length`` bytes of the current file; None at its end (the file mark,
        which is passed) or at end of data (not passed: check ``at_end_of_data``)."""
        if self.at_end_of_data:
            return None
        size = self.sizes[self.file]
        if self.offset >= size:
            self.close_file()
            self.file += 1
            self.offset = 0
            return None
        with open(self.path(self.file), "rb") as f:
            f.seek(self.offset)
            data = f.read(min(length, size - self.offset))
        self.offset += len(data)
        return data

    def rewind(self) -> None:
        self.close_file()
        self.file = 0
        self.offset = 0

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"{self.directory} is read-only")

    def close(self) -> None:
        self.close_file()
