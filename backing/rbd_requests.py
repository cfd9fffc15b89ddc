"""The asynchronous requests of one open RBD image: queued with librbd's ``rbd_aio_*``
calls, merged when adjacent, admitted under the rados client's budget, and completed on
the event loop.

How completions reach the loop: each image gets an eventfd through
``rbd_set_image_notification``. A request is queued with ``rbd_aio_*`` and a completion
that carries a key and no callback; when librbd finishes one it queues it and signals the
eventfd, and the loop's reader for that fd collects the finished completions with
``rbd_poll_io_events`` and resolves their futures. No Python code runs on librbd's
threads (no GIL handoff per I/O), and no librbd call on the loop waits for the network.
Writes of 512 KiB or more are given to librbd by one submit thread per image
(``Submitter``), and what is asked for after them queues behind them there until the
thread has caught up, so requests reach librbd in the order they were asked for.

The caller's buffer is handed to librbd as it is (no copy in either direction), so a
request's waiter never leaves before librbd is done with it, even when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from ctypes import CFUNCTYPE, byref, c_void_p

from backing.errors import MediumReadError, MediumWriteError, SpaceExhausted, StoreError
from backing.rbd_cluster import MAX_IN_FLIGHT_BYTES, MAX_IN_FLIGHT_OPS, Cluster
from backing.rbd_lib import lib

POLL_BATCH = 64
# Adjacent reads (or writes) asked for in one turn of the loop go to librbd as one vectored
# request of at most this many pieces and bytes (``ImageRequests._unplug``).
MERGE_MAX_REQUESTS = 64
MERGE_MAX_BYTES = 1 << 20
# A write at least this large is given to librbd by the image's submit thread, not the loop:
# ``rbd_aio_write`` copies the data and wakes librbd's messenger, and on a busy host the
# caller is then often switched out inside the call (docs/rbd.md, "Where the rbd_aio_write
# call's time goes"). Smaller requests would pay the hand-off more than they save: a
# sequential stream of 4 KiB writes, merged into requests of up to 256 KiB, went 0.69-0.84x
# as fast when those went by the thread.
SUBMIT_THREAD_MIN_BYTES = 512 << 10


class Submitter:
    """One thread that makes librbd calls in the order they were queued. The loop queues
    a call here when it is a large write or when the queue still holds one (so nothing made
    on the loop passes a call queued before it); a refused call is handed back to the loop."""

    def __init__(self, refused: Callable[[c_void_p, int], None]) -> None:
        self._refused = refused
        self._queue: queue.SimpleQueue[
            tuple[Callable[..., int], tuple[object, ...], c_void_p] | None
        ] = queue.SimpleQueue()
        self.queued = 0  # written by the loop only
        self.done = 0  # written by the thread only, after the call returned
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="rbd-submit", daemon=True)
        self._thread.start()

    def busy(self) -> bool:
        return self.queued != self.done

    def put(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., int],
            args: tuple[object, ...], comp: c_void_p) -> None:  # fmt: skip
        self._loop = loop
        self.queued += 1
        self._queue.put((fn, args, comp))

    def stop(self) -> None:
        """Make every queued call, then end the thread (blocking, briefly: no call queued
        here waits for the network)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args, comp = item
            try:
                ret = fn(*args)
            except Exception:  # a call ctypes refused: failed like one librbd refused
                ret = -errno.EINVAL
            if ret < 0 and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._refused, comp, ret)
            self.done += 1


# void (*rbd_callback_t)(rbd_completion_t cb, void *arg)
COMPLETION_CALLBACK = CFUNCTYPE(None, c_void_p, c_void_p)


class IoVec(ctypes.Structure):
    """struct iovec"""

    _fields_ = [("base", c_void_p), ("length", ctypes.c_size_t)]


class Request:
    """One read, write or other request of the store, waiting for librbd."""

    __slots__ = ("addr", "done", "finished", "keep", "length", "offset", "write")

    def __init__(
        self,
        done: asyncio.Future[int],
        write: bool = False,
        offset: int = 0,
        length: int = 0,
        addr: int = 0,
        keep: object = None,
    ) -> None:
        self.done = done
        self.write = write
        self.offset = offset
        self.length = length
        self.addr = addr
        self.keep = keep
        self.finished = False

    def finish(self, ret: int) -> None:
        self.finished = True
        if not self.done.done():
            self.done.set_result(ret)


def store_error(
    err: int, where: str, op: str, offset: int | None, length: int | None
) -> StoreError:
    if err in (errno.ENOSPC, errno.EDQUOT) and op != "read":
        return SpaceExhausted(err, where, op, offset, length)
    if op == "read":
        return MediumReadError(err, where, op, offset, length)
    return MediumWriteError(err, where, op, offset, length)


def buffer_address(data: bytes | bytearray | memoryview) -> tuple[int, object]:
    """The address of ``data``'s bytes and the object that keeps them alive, without a
    copy where the buffer allows it."""
    if isinstance(data, bytes):
        pointer = ctypes.c_char_p(data)
        return ctypes.cast(pointer, c_void_p).value or 0, (pointer, data)
    view = data if isinstance(data, memoryview) else memoryview(data)
    n = view.nbytes
    try:
        arr = (ctypes.c_char * n).from_buffer(view)
    except TypeError:  # read-only, or not contiguous: one copy
        arr = (ctypes.c_char * n).from_buffer_copy(view)
    return ctypes.addressof(arr), arr


class ImageRequests:
    """The request queue of an open image (``RbdImage``, which opens and closes the image
    these requests go to, and sets the attributes below)."""

    path: str  # how errors name the store
    _cluster: Cluster | None
    _image: c_void_p
    _efd: int  # librbd signals finished completions here
    _loop: asyncio.AbstractEventLoop | None

    def __init__(self) -> None:
        # Requests librbd holds, by completion: each a group of one or more (merged).
        self._pending: dict[int, tuple[list[Request], object]] = {}
        # Reads and writes asked for in this turn of the loop, not yet given to librbd.
        self._plug: list[Request] = []
        self.merged_requests = 0  # reads and writes that went to librbd merged with others
        self._polled = (c_void_p * POLL_BATCH)()
        # librbd (16.2) leaves compare-and-write out of the eventfd notification: that one
        # completion calls back on librbd's thread, which queues it here and signals the fd.
        self._called_back: deque[int] = deque()
        self._callback = COMPLETION_CALLBACK(self._completed_on_librbd_thread)
        self._callback_ptr = ctypes.cast(self._callback, c_void_p)
        # A reopen (after a fence) is under way: nothing new goes to the old handle.
        self._reopening = False
        # Counts reopens: a request whose librbd call was bound to the handle of an older
        # generation (before it waited for the budget) is not given to the new one.
        self._generation = 0
        self._submitter: Submitter | None = None

    def _give(
        self, fn: Callable[..., int], args: tuple[object, ...], comp: c_void_p, large: bool
    ) -> None:
        """Make the librbd call ``fn(*args)`` for ``comp``: on the submit thread when it is
        a large write or when calls queued there are not all made yet, else here."""
        submitter = self._submitter
        if large and submitter is None:
            submitter = self._submitter = Submitter(self._submitted)
        if submitter is not None and (large or submitter.busy()):
            submitter.put(self._loop or asyncio.get_running_loop(), fn, args, comp)
        else:
            self._submitted(comp, fn(*args))

    def _stop_submitter(self) -> None:
        """Before the image closes: every queued call made, the thread ended."""
        # (getattr: a store whose open failed is torn down before this was set.)
        submitter = getattr(self, "_submitter", None)
        self._submitter = None
        if submitter is not None:
            submitter.stop()

    def _attach(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and loop.is_running():
            # The loop of the last request, still running: this one's (one loop per
            # thread). CPython 3.11's get_running_loop() costs a getpid() system call.
            return loop
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._efd)
            loop.add_reader(self._efd, self._harvest)
            self._loop = loop
        return loop

    def _completed_on_librbd_thread(self, comp: int | None, _arg: int | None) -> None:
        self._called_back.append(comp or 0)
        os.eventfd_write(self._efd, 1)

    def _harvest(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        while self._called_back:
            self._finish(self._called_back.popleft())
        polled = self._polled
        while True:
            n = lib().rbd_poll_io_events(self._image, polled, POLL_BATCH)
            for i in range(max(n, 0)):
                self._finish(polled[i])
            if n < POLL_BATCH:
                return

    def _finish(self, comp: int | None) -> None:
        rbd = lib()
        ret = rbd.rbd_aio_get_return_value(comp)
        rbd.rbd_aio_release(comp)
        entry = self._pending.pop(comp or 0, None)
        if entry is not None:
            for request in entry[0]:
                request.finish(ret)

    async def _admit(
        self, op: str, offset: int | None, length: int | None, data_bytes: int
    ) -> Cluster:
        """Count one request in the client's budget (waiting while it is full)."""
        cluster = self._cluster
        if cluster is None or not self._image or self._reopening:  # closed, or being reopened
            raise store_error(errno.ESHUTDOWN, self.path, op, offset, length)
        if (
            cluster.in_flight_ops >= MAX_IN_FLIGHT_OPS
            or cluster.in_flight_bytes + data_bytes > MAX_IN_FLIGHT_BYTES
        ):
            await cluster.admit(data_bytes)
        else:
            cluster.in_flight_ops += 1
            cluster.in_flight_bytes += data_bytes
        return cluster

    async def _run(
        self,
        op: str,
        offset: int | None,
        length: int | None,
        keep: object,
        submit: object,
        *,
        callback: bool = False,
        data_bytes: int = 0,
    ) -> int:
        """Queue one request (``submit(completion) -> int``) and wait for its result.
        Reads and writes asked for before it go to librbd first (submission order).
        ``submit`` holds the handle open when it was made: after a reopen meanwhile (while
        this waited for the budget) it is not called, and the request fails as fenced."""
        generation = self._generation
        cluster = await self._admit(op, offset, length, data_bytes)
        try:
            if self._reopening or self._generation != generation:
                raise store_error(errno.ESHUTDOWN, self.path, op, offset, length)
            loop = self._attach()
            if self._plug:
                self._unplug()
            request = Request(loop.create_future())
            comp = self._completion([request], keep, callback)
            if comp is not None:
                self._give(submit, (comp,), comp, False)  # type: ignore[arg-type]
            return await self._wait(request, op, offset, length)
        finally:
            cluster.release(data_bytes)

    async def _io(self, write: bool, offset: int, n: int, addr: int, keep: object) -> None:
        """A read or write, given to librbd at the end of this turn of the loop with those
        asked for in the same turn, adjacent ones merged into one request (``_unplug``)."""
        op = "write" if write else "read"
        cluster = await self._admit(op, offset, n, n)
        try:
            loop = self._attach()
            request = Request(loop.create_future(), write, offset, n, addr, keep)
            if not self._plug:
                loop.call_soon(self._unplug)
            self._plug.append(request)
            await self._wait(request, op, offset, n)
        finally:
            cluster.release(n)

    def _unplug(self) -> None:
        """Give librbd the reads and writes asked for since the last time, in order; a run
        of adjacent ones of the same kind (a sequential stream: one command per 4 KiB
        block) goes as one vectored request: one OSD operation, one completion."""
        plug, self._plug = self._plug, []
        if not plug:
            return
        image = self._image if not self._reopening else c_void_p()
        rbd = lib()
        i, count = 0, len(plug)
        while i < count:
            first = plug[i]
            end = first.offset + first.length
            j = i + 1
            while (
                j < count
                and j - i < MERGE_MAX_REQUESTS
                and plug[j].write == first.write
                and plug[j].offset == end
                and end + plug[j].length - first.offset <= MERGE_MAX_BYTES
            ):
                end += plug[j].length
                j += 1
            if not image:
                for request in plug[i:j]:
                    request.finish(-errno.ESHUTDOWN)
            elif j == i + 1:
                comp = self._completion([first], first.keep, False)
                if comp is not None:
                    aio = rbd.rbd_aio_write if first.write else rbd.rbd_aio_read
                    large = first.write and first.length >= SUBMIT_THREAD_MIN_BYTES
                    args = (image, first.offset, first.length, first.addr, comp)
                    self._give(aio, args, comp, large)
            else:
                group = plug[i:j]
                self.merged_requests += len(group)
                iov = (IoVec * len(group))()
                for k, request in enumerate(group):
                    iov[k].base = request.addr
                    iov[k].length = request.length
                comp = self._completion(group, (iov, [r.keep for r in group]), False)
                if comp is not None:
                    aiov = rbd.rbd_aio_writev if first.write else rbd.rbd_aio_readv
                    large = first.write and end - first.offset >= SUBMIT_THREAD_MIN_BYTES
                    vargs = (image, iov, len(group), first.offset, comp)
                    self._give(aiov, vargs, comp, large)
            i = j

    def _completion(self, group: list[Request], keep: object, callback: bool) -> c_void_p | None:
        """A librbd completion for ``group`` (None: refused, and the group finished)."""
        comp = c_void_p()
        ret = lib().rbd_aio_create_completion(
            None, self._callback_ptr if callback else None, byref(comp)
        )
        if ret < 0:
            for request in group:
                request.finish(ret)
            return None
        self._pending[comp.value or 0] = (group, keep)
        return comp

    def _submitted(self, comp: c_void_p, ret: int) -> None:
        """After the ``rbd_aio_*`` call: one that refused finishes its group now."""
        if ret < 0:
            # (Refused on the submit thread after a reopen ended its requests: gone.)
            entry = self._pending.pop(comp.value or 0, None)
            lib().rbd_aio_release(comp)
            for request in entry[0] if entry is not None else ():
                request.finish(ret)

    async def _wait(self, request: Request, op: str, offset: int | None, length: int | None) -> int:
        """The result of ``request``. Cancelled, it still waits while librbd holds its
        buffer and may still change the image, then raises CancelledError. (A plugged
        request is always given to librbd first: ``_unplug`` was scheduled before any
        cancellation could wake its waiter.)"""
        cancelled = False
        while True:
            try:
                ret = await request.done
                break
            except asyncio.CancelledError:
                cancelled = True
                if request.finished:
                    ret = 0
                    break
                request.done = asyncio.get_running_loop().create_future()
        if cancelled:
            raise asyncio.CancelledError
        if ret < 0:
            raise store_error(-ret, self.path, op, offset, length)
        return ret
