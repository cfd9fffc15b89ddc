"""SHA-256 of what a backup streams to a tape or file sink, computed by the target.

A backup's data never passes through a host, so only the target can say what it wrote.
Between a START DIGEST segment (C1h) and a WRITE LABEL segment (C2h) naming the same
stream LU, every byte the copies of one I_T nexus write to (or read from) that LU is
hashed, in order, across as many EXTENDED COPY lists as the backup needs; WRITE LABEL
puts the digest on the medium (:mod:`xcopy.labels`), CHECK LABEL (C3h) compares it with
the label found there. docs/xcopy.md, "Self-describing backups".

The copy must not wait for the hash: the bytes (or a :class:`~scsi.kernel_file.Readback`
of bytes a kernel copy wrote) are queued to a digest thread of their own, at the copy
threads' low priority, and the copy goes on; only a backlog past :data:`BACKLOG` makes
the feeding thread (a copy thread or a stream LU's I/O thread, never the event loop)
wait. WRITE LABEL waits until the queue is drained.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from scsi.kernel_file import Readback
from xcopy.pacing import PacedExecutor, apply_priority

MiB = 1 << 20
# Bytes queued ahead of the hash before a feeder waits: a few records, so a copy never
# holds more than this on top of its own chunks.
BACKLOG = 32 * MiB
WORKERS = 2  # two backups to two tapes hash at once

Fed = bytes | bytearray | memoryview | Readback
Observer = Callable[[Fed], None]

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def digest_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = PacedExecutor(WORKERS, thread_name_prefix="xcopy-digest")
        return _executor


@dataclass(frozen=True, slots=True)
class Result:
    sha256: str
    bytes: int
    records: int


class StreamDigest:
    """One running SHA-256. ``feed`` may be called from any thread but the event loop;
    the items are hashed in the order they were fed."""

    def __init__(self, initiator: str) -> None:
        self.initiator = initiator
        self.records = 0  # counted by the engine, segment by segment
        self._sha = hashlib.sha256()
        self._bytes = 0
        self._queue: deque[Fed] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._draining = False
        self._closed = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.error: BaseException | None = None

    def feed(self, item: Fed) -> None:
        size = len(item)
        if not size:
            if isinstance(item, Readback):
                item.close()
            return
        if isinstance(item, memoryview | bytearray):
            item = bytes(item)  # the caller may reuse its buffer
        with self._cond:
            while self._queued > BACKLOG and self.error is None and not self._closed:
                self._cond.wait()
            if self._closed:
                if isinstance(item, Readback):
                    item.close()
                return
            self._queue.append(item)
            self._queued += size
            if self._draining:
                return
            self._draining = True
        digest_executor().submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._cond:
                if not self._queue or self._closed:
                    self._draining = False
                    self._cond.notify_all()
                    self._wake()
                    return
                item = self._queue.popleft()
            apply_priority()  # one drain may last a whole backup: a reload applies here
            size = len(item)
            try:
                if self.error is None:
                    data = item.read() if isinstance(item, Readback) else item
                    self._sha.update(data)
                    self._bytes += len(data)
            except BaseException as err:  # kept for result(): the label is not written
                self.error = err
            finally:
                if isinstance(item, Readback):
                    item.close()
            with self._cond:
                self._queued -= size
                self._cond.notify_all()

    def _wake(self) -> None:
        """Under the condition: the queue is empty; tell the awaiting result()s."""
        for loop, future in self._waiters:
            loop.call_soon_threadsafe(_resolve, future)
        self._waiters.clear()

    async def result(self) -> Result:
        """Once every fed byte is hashed: the digest. OSError if a read-back failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._draining:
                self._waiters.append((loop, future))
            else:
                future.set_result(None)
        await future
        if self.error is not None:
            raise OSError(f"the backup's digest could not be computed: {self.error}")
        return Result(self._sha.hexdigest(), self._bytes, self.records)

    def discard(self) -> None:
        """Drop what is queued (its read-backs closed); feeders stop waiting."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
            if not self._draining:
                self._wake()
        for item in pending:
            if isinstance(item, Readback):
                item.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Digests:
    """The open digests of one copy manager, by (initiator port, stream LU)."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], StreamDigest] = {}

    def start(self, initiator: str, lu: object) -> StreamDigest:
        self.discard(initiator, lu)
        digest = self._open[(initiator, id(lu))] = StreamDigest(initiator)
        return digest

    def get(self, initiator: str, lu: object) -> StreamDigest | None:
        return self._open.get((initiator, id(lu)))

    def take(self, initiator: str, lu: object) -> StreamDigest | None:
        return self._open.pop((initiator, id(lu)), None)

    def discard(self, initiator: str, lu: object) -> None:
        digest = self._open.pop((initiator, id(lu)), None)
        if digest is not None:
            digest.discard()

    def drop_lu(self, lu: object) -> None:
        """The LU goes away (a reload removed it): its open digests go with it."""
        for key in [k for k in self._open if k[1] == id(lu)]:
            self._open.pop(key).discard()

    def __len__(self) -> int:
        return len(self._open)
