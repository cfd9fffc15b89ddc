"""One daemon per state directory: ``targetd serve`` holds ``STATE_DIR/targetd.lock`` for its
life, so a second daemon started on the same directory (``scripts/serve.sh`` run twice, a
unit and a hand-started copy) stops with a message instead of serving the same LUN files,
pair bitmaps and tape images beside the first and taking its admin socket away.

The lock is ``flock``: the kernel drops it when the holder exits, even by ``kill -9`` or a
power cut, so no stale lock outlives a daemon. The file holds the holder's pid, for the
message only. Worker processes share their portal's directory and take no lock of their own.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "targetd.lock"


class StateDirError(Exception):
    """The state directory cannot be made, opened or is held by another daemon."""


class StateLock:
    """Held from :func:`hold` until :meth:`release` (or the process ends)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def prepare(state_dir: Path) -> None:
    """Make the state directory (and its parents), or say in one line why it cannot be."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StateDirError(f"state directory {state_dir}: exists and is not a directory") from None
    except OSError as err:
        raise StateDirError(f"state directory {state_dir}: {_why(err)}") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StateDirError(f"state directory {state_dir}: not writable by this user")


def hold(state_dir: Path) -> StateLock:
    """Make ``state_dir`` and take its lock, or raise :class:`StateDirError`."""
    prepare(state_dir)
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise StateDirError(f"state directory {state_dir}: {path.name}: {_why(err)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _holder(fd)
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise StateDirError(
                f"state directory {state_dir} is in use by another targetd{holder}: "
                "stop it, or give this one its own --state-dir"
            ) from None
        raise StateDirError(f"state directory {state_dir}: {path.name}: {_why(err)}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(fd)


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f" (pid {text})" if text.isdigit() else ""


def _why(err: OSError) -> str:
    return err.strerror or str(err)
