"""A connection's output to its socket: bytes through the asyncio transport, and ranges of
an LU's file (the Data-In of a large READ) with sendfile(2) straight into the socket.

sendfile saves both copies of the buffered path, the file into a buffer (``preadv``) and the
buffer into the socket (``writev``): for a 1 MiB read that was 80% of the daemon's CPU. A
range can only be sent once the transport's own buffer is empty, or its bytes would overtake
the ones queued there; whatever comes after it waits here, in order, until it is sent. The
socket is non-blocking, so a range the socket cannot take at once is finished when the
socket is writable again, watched through a duplicate of its descriptor (uvloop refuses a
reader or writer on a descriptor its transport owns).

A range whose file cannot be read (closed by a reload, an I/O error) after its Data-In
header has gone out cannot be answered with a CHECK CONDITION any more: the connection is
aborted instead, so the initiator never takes wrong bytes for good ones and retries the
command on a new connection.

``TARGETD_SENDFILE=0`` in the daemon's environment turns sendfile off (every READ is read
into a buffer), for comparing the two paths.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import cast

from scsi.command import FileRange
from targetd.iscsi.connection import Output

log = logging.getLogger("targetd")

ENABLED = os.environ.get("TARGETD_SENDFILE", "1") != "0"


class SocketOutput:
    """Writes a connection's output in order; ``queued`` is what waits here (bytes)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress: Callable[[], None] = lambda: None
        self._sock = -1
        self._watch = -1  # a duplicate of the socket's descriptor, to wait for writability
        self._watching = False
        self._queue: deque[Output] = deque()
        self.queued = 0

    def attach(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        progress: Callable[[], None],
    ) -> bool:
        """Write to ``transport``; ``progress`` is called when what waited here has been
        written while the socket was being watched. Returns whether file ranges can be
        sent (a real socket, and sendfile not turned off)."""
        self._transport = transport
        self._loop = loop
        self._progress = progress
        sock = transport.get_extra_info("socket")
        self._sock = sock.fileno() if sock is not None else -1
        return ENABLED and self._sock >= 0

    def write(self, items: list[Output]) -> None:
        """Write ``items`` after everything written before."""
        transport = self._transport
        assert transport is not None
        if not self._queue:
            # The bytes before the first range go to the transport now.
            i = next((i for i, item in enumerate(items) if type(item) is FileRange), -1)
            if i < 0:
                transport.writelines(cast(list[bytes], items))
                return
            if i:
                transport.writelines(cast(list[bytes], items[:i]))
                items = items[i:]
        self._queue.extend(items)
        self.queued += sum(map(len, items))
        self.drive()

    def drive(self) -> None:
        """Write what waits here, as far as the transport and the socket allow."""
        transport = self._transport
        queue = self._queue
        while queue and transport is not None and not transport.is_closing():
            if type(queue[0]) is not FileRange:
                batch = []
                while queue and type(queue[0]) is not FileRange:
                    batch.append(queue.popleft())
                self.queued -= sum(map(len, batch))
                transport.writelines(cast(list[bytes], batch))
                continue
            if transport.get_write_buffer_size():
                self._unwatch()  # resume_writing comes when the transport's buffer is empty
                return
            rng = queue[0]
            try:
                fd = rng.file.fd
                if fd < 0:
                    raise OSError(errno.EBADF, "the LU's file was closed")
                sent = os.sendfile(self._sock, fd, rng.offset, rng.length)
            except BlockingIOError:
                self._watch_socket()
                return
            except OSError as exc:
                self._fail(exc)
                return
            if sent == 0:
                # The file ends before the LU does (truncated behind our back): the rest
                # reads as zeros, as preadv's path gives them.
                queue[0] = bytes(rng.length)
                continue
            self.queued -= sent
            if sent < rng.length:
                queue[0] = rng[sent:]
            else:
                queue.popleft()
        self._unwatch()

    def close(self) -> None:
        """The connection is gone: drop what waits, stop watching."""
        self._unwatch()
        self._queue.clear()
        self.queued = 0
        if self._watch >= 0:
            os.close(self._watch)
            self._watch = -1
        self._transport = None

    def _watch_socket(self) -> None:
        if self._watching or self._loop is None:
            return
        if self._watch < 0:
            self._watch = os.dup(self._sock)
        self._loop.add_writer(self._watch, self._writable)
        self._watching = True

    def _unwatch(self) -> None:
        if self._watching and self._loop is not None:
            self._loop.remove_writer(self._watch)
        self._watching = False

    def _writable(self) -> None:
        self.drive()
        if not self._queue:
            self._progress()

    def _fail(self, exc: OSError) -> None:
        transport = self._transport
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
            log.error("sending READ data from the LU's file failed, closing the connection: %s",
                      exc)  # fmt: skip
        self._unwatch()
        self._queue.clear()
        self.queued = 0
        if transport is not None:
            transport.abort()
