"""Small files that survive a power cut: a directory's entries made durable, and a file
replaced whole (the pair groups, the copy journal, a tape library's inventory, a LU's
persistent reservations)."""

from __future__ import annotations

import os
from pathlib import Path


def sync_directory(path: Path) -> None:
    """fsync the directory ``path``: a name created, renamed or removed in it is durable
    only then (syncing the file's data is not enough)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, *, mode: int, tmp: Path | None = None) -> None:
    """``path`` replaced whole by ``data``: written to ``tmp`` (``path`` with the suffix
    ``.tmp`` by default, made with ``mode`` less the umask), synced, renamed over ``path``,
    and the rename made durable. A reader, or the daemon after a crash, finds the old
    contents or the new, never a mix."""
    tmp = path.with_suffix(".tmp") if tmp is None else tmp
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_directory(path.parent)
