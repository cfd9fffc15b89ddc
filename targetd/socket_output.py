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
import socket
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
        # A duplicate of the socket's descriptor: for headers sent with MSG_MORE, and to
        # wait for writability on.
        self._dup: socket.socket | None = None
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
        if transport is None:  # closed (a failed range): the connection is going away
            return
        if not self._queue and not any(type(item) is FileRange for item in items):
            transport.writelines(cast(list[bytes], items))
            return
        self._queue.extend(items)
        self.queued += sum(map(len, items))
        self.drive()

    def drive(self) -> None:
        """Write what waits here, as far as the transport and the socket allow."""
        transport = self._transport
        queue = self._queue
        while queue and transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size():
                self._unwatch()  # resume_writing comes when the transport's buffer is empty
                return
            head = queue[0]
            try:
                if type(head) is FileRange:
                    fd = head.file.fd
                    if fd < 0:
                        raise OSError(errno.EBADF, "the LU's file was closed")
                    sent = os.sendfile(self._sock, fd, head.offset, head.length)
                    if sent == 0:
                        # The file ends before the LU does (truncated behind our back): the
                        # rest reads as zeros, as on preadv's path.
                        queue[0] = bytes(head.length)
                        continue
                else:
                    batch: list[bytes] = []
                    for item in queue:
                        if type(item) is FileRange:
                            break
                        batch.append(item)  # type: ignore[arg-type]
                    if len(batch) == len(queue):
                        # Nothing to send from a file after these: the transport's job.
                        queue.clear()
                        self.queued = 0
                        transport.writelines(batch)
                        break
                    # Headers before a range: MSG_MORE lets the kernel send them in the
                    # range's first segment, not in a 48-byte packet of their own.
                    sent = self._direct().sendmsg(batch, (), socket.MSG_MORE)
            except BlockingIOError:
                self._watch_socket()
                return
            except OSError as exc:
                self._fail(exc)
                return
            self.queued -= sent
            while sent:  # what went: whole items off the queue, the last one cut
                item = queue[0]
                n = len(item)
                if sent < n:
                    queue[0] = item[sent:]
                    break
                queue.popleft()
                sent -= n
        self._unwatch()

    def close(self) -> None:
        """The connection is gone: drop what waits, stop watching."""
        self._unwatch()
        self._queue.clear()
        self.queued = 0
        if self._dup is not None:
            self._dup.close()
            self._dup = None
        self._transport = None

    def _direct(self) -> socket.socket:
        """The socket, beside the transport: a duplicate descriptor of it."""
        if self._dup is None:
            self._dup = socket.socket(fileno=os.dup(self._sock))
            self._dup.setblocking(False)
        return self._dup

    def _watch_socket(self) -> None:
        if self._watching or self._loop is None:
            return
        self._loop.add_writer(self._direct().fileno(), self._writable)
        self._watching = True

    def _unwatch(self) -> None:
        if self._watching and self._loop is not None and self._dup is not None:
            self._loop.remove_writer(self._dup.fileno())
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
        self.close()  # our duplicate too, or the socket would stay open
        if transport is not None:
            transport.abort()
