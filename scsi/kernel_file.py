"""Plain files a device hands out so the kernel can copy between them (copy_file_range).

A copy manager that moves a block LU's bytes into another LU's file need not carry them
through user space. It must not reach into a store for its file descriptor either: the
device decides whether its bytes are a plain file right now (a pair's target volume is
not while its split image is still arriving) and, on the writing side, which checks and
hooks the write goes through. A :class:`KernelFile` is what the device hands out: the
copy manager can only copy from one to another, in slices, and pass it back to a device.
"""

from __future__ import annotations

import os
from collections.abc import Callable


class KernelFile:
    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd  # for the devices of scsi/; the copy manager never reads it

    def copy_to(
        self,
        dst: KernelFile,
        src_offset: int,
        dst_offset: int,
        length: int,
        *,
        step: int,
        between: Callable[[], None] = lambda: None,
    ) -> None:
        """Blocking: ``length`` bytes from ``src_offset`` here to ``dst_offset`` of ``dst``,
        at most ``step`` per call, ``between()`` after each call but the last."""
        done = 0
        while done < length:
            want = min(step, length - done)
            n = os.copy_file_range(self.fd, dst.fd, want, src_offset + done, dst_offset + done)
            if n == 0:
                raise OSError(f"source file ended {length - done} bytes short of the copy")
            done += n
            if done < length:
                between()


class Readback:
    """Bytes a device just wrote to one of its files, to be read back later, on another
    thread (a copy manager hashing what a backup wrote: docs/xcopy.md). It holds a
    duplicate of the file descriptor, so the device may close its own meanwhile; it must
    be closed (``read`` does not close it)."""

    __slots__ = ("_fd", "length", "offset")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd = os.dup(fd)
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        parts = []
        done = 0
        while done < self.length:
            data = os.pread(self._fd, self.length - done, self.offset + done)
            if not data:
                raise OSError(f"{self.length - done} bytes written are gone from the file")
            parts.append(data)
            done += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
