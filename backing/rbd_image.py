"""An RBD image as a block store: librbd's asynchronous calls, completed on the event loop.

This module knows nothing of SCSI. Offsets and lengths are in bytes. It offers what
``SparseFile`` offers (``read_into``, ``write``, ``flush``, ``punch_hole``,
``write_zeroes``, ``extents``, ``close``) plus ``compare_and_write``, atomic in the cluster.

How completions reach the loop: each image gets an eventfd through
``rbd_set_image_notification``. A request is queued with ``rbd_aio_*`` and a completion
that carries a key and no callback; when librbd finishes one it queues it and signals the
eventfd, and the loop's reader for that fd collects the finished completions with
``rbd_poll_io_events`` and resolves their futures. No Python code runs on librbd's
threads (no GIL handoff per I/O), and no librbd call on the loop waits for the network.

The caller's buffer is handed to librbd as it is (no copy in either direction), so a
request's waiter never leaves before librbd is done with it, even when cancelled.

Caching (docs/rbd.md): with ``cache = "none"`` (the default) librbd's cache is off and a
write completes only when the OSDs hold it, so FUA costs nothing extra and SYNCHRONIZE
CACHE is cheap. With ``cache = "writearound"`` librbd acknowledges writes once sent to the
OSDs, and with ``cache = "writeback"`` from its cache; FUA then adds a flush after the
write, and SYNCHRONIZE CACHE flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from ctypes import CFUNCTYPE, byref, c_int, c_uint64, c_void_p
from dataclasses import dataclass, replace
from typing import TypeVar

from backing.errors import MediumReadError, MediumWriteError, SpaceExhausted, StoreError
from backing.malloc_threshold import LIBRBD_THRESHOLD, fix_mmap_threshold
from backing.rbd_allocation import Allocation
from backing.rbd_lib import (
    DIFF_CALLBACK,
    EVENT_TYPE_EVENTFD,
    RBD_FEATURE_FAST_DIFF,
    RBD_LOCK_MODE_EXCLUSIVE,
    SnapInfo,
    check,
    client_address,
    lib,
    mon_command,
)
from backing.sparse_file import Extent
from backing.threads import outlast

log = logging.getLogger("targetd.rbd")

T = TypeVar("T")

CACHE_MODES = ("none", "writearound", "writeback")
# Above this size the allocation is read per object from the object map (fast-diff), not
# per byte range: exact ranges would mean asking every object, slow for a large image.
WHOLE_OBJECT_ABOVE = 16 << 30
_POLL_BATCH = 64
# Requests in flight per rados client, below the objecter's own throttles
# (objecter_inflight_ops 1024, objecter_inflight_op_bytes 100 MiB) with room for a request
# that spans several objects: over those, librbd would block the event loop.
MAX_IN_FLIGHT_OPS = 256
MAX_IN_FLIGHT_BYTES = 64 << 20
WRITEAROUND_INFLIGHT_OPS = 65536
# Adjacent reads (or writes) asked for in one turn of the loop go to librbd as one vectored
# request of at most this many pieces and bytes (``RbdImage._unplug``).
MERGE_MAX_REQUESTS = 64
MERGE_MAX_BYTES = 1 << 20
# void (*rbd_callback_t)(rbd_completion_t cb, void *arg)
_COMPLETION_CALLBACK = CFUNCTYPE(None, c_void_p, c_void_p)


@dataclass(frozen=True, slots=True)
class RbdSpec:
    """Where an image is and how to reach it (the ``kind = "rbd"`` LUN keys)."""

    pool: str
    image: str
    namespace: str = ""
    ceph_conf: str = "/etc/ceph/ceph.conf"
    client: str = "client.admin"  # a bare "admin" means client.admin
    keyring: str = ""  # empty: what ceph.conf says
    create_size: int | None = None  # create the image with this size if it is absent
    cache: str = "none"
    osd_op_timeout: float = 30.0  # seconds before an OSD operation fails (0: never)
    connect_timeout: float = 30.0  # seconds to reach the monitors at start
    snapshot: str = ""  # open the image as it is in this snapshot (read-only)
    # A rados client of its own, not shared with other images: a gateway's image can be
    # fenced (its client blocklisted) and reopened without touching any other image.
    private_client: bool = False

    @property
    def name(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.pool}/{ns}{self.image}"

    @property
    def client_name(self) -> str:
        return self.client if "." in self.client else f"client.{self.client}"


# -- connections: one rados handle per (conf, client, keyring, options), shared ----------
class _Cluster:
    """One rados client and its budget of requests in flight (see ``admit``)."""

    def __init__(self, key: tuple[object, ...], spec: RbdSpec) -> None:
        self.key = key
        self.refs = 0
        self.in_flight_ops = 0
        self.in_flight_bytes = 0
        self._waiters: list[asyncio.Future[None]] = []
        handle = c_void_p()
        check(
            lib().rados_create2(byref(handle), b"ceph", spec.client_name.encode(), 0),
            "rados_create2",
        )
        self.handle = handle
        try:
            check(
                lib().rados_conf_read_file(handle, spec.ceph_conf.encode()),
                f"reading {spec.ceph_conf}",
            )
            options = {
                "client_mount_timeout": f"{spec.connect_timeout:g}",
                "rados_mon_op_timeout": f"{spec.connect_timeout:g}",
                "rados_osd_op_timeout": f"{spec.osd_op_timeout:g}",
                "rbd_cache": "false" if spec.cache == "none" else "true",
                # Pacific's default policy is writearound: only what was asked, from the
                # first write on (the initiator sees a volatile cache, WCE = 1).
                "rbd_cache_policy": "writethrough" if spec.cache == "none" else spec.cache,
                "rbd_cache_writethrough_until_flush": "false",
                # A discard must zero exactly what it covers (thin provisioning reports
                # LBPRZ): librbd would otherwise skip the parts of objects it cannot free.
                "rbd_skip_partial_discard": "false",
                # Requests are dispatched in the calling thread (the event loop), about 8 us
                # each, instead of being handed to librbd's queue thread: the hand-off
                # halved 4 KiB IOPS here. The objecter's throttles could then block the
                # caller; ``admit`` keeps every request under them.
                "rbd_non_blocking_aio": "false",
                "log_to_stderr": "false",
                "err_to_stderr": "false",
            }
            if spec.cache == "writearound":
                # Writes complete once sent, so up to rbd_cache_max_dirty (24 MiB) of them
                # may be in flight beyond ``admit``'s budget: even in 512-byte writes they
                # must not reach the objecter's op throttle, which would block the loop.
                options["objecter_inflight_ops"] = str(WRITEAROUND_INFLIGHT_OPS)
            if spec.keyring:
                options["keyring"] = spec.keyring
            for name, value in options.items():
                check(lib().rados_conf_set(handle, name.encode(), value.encode()), name)
            check(lib().rados_connect(handle), "connecting to the monitors")
            self.address = client_address(handle)
            # librbd allocates a buffer per request: from the heap, not mapped apart each time.
            fix_mmap_threshold(LIBRBD_THRESHOLD)
        except BaseException:
            lib().rados_shutdown(handle)
            raise

    def mon_command(self, command: dict[str, object]) -> str:
        """One monitor command (blocking); its status text."""
        return mon_command(self.handle, command)

    async def admit(self, data_bytes: int) -> None:
        """Wait until one more request of ``data_bytes`` fits the budget."""
        while self.in_flight_ops >= MAX_IN_FLIGHT_OPS or (
            self.in_flight_bytes and self.in_flight_bytes + data_bytes > MAX_IN_FLIGHT_BYTES
        ):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight_ops += 1
        self.in_flight_bytes += data_bytes

    def release(self, data_bytes: int) -> None:
        self.in_flight_ops -= 1
        self.in_flight_bytes -= data_bytes
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


_clusters: dict[tuple[object, ...], _Cluster] = {}
_clusters_lock = threading.Lock()


def _acquire_cluster(spec: RbdSpec) -> _Cluster:
    key: tuple[object, ...] = (
        spec.ceph_conf,
        spec.client_name,
        spec.keyring,
        spec.cache,
        spec.osd_op_timeout,
        spec.connect_timeout,
    )
    if spec.private_client:
        key = (*key, object())  # never found again: a client of its own
    with _clusters_lock:
        cluster = _clusters.get(key)
        if cluster is None:
            cluster = _clusters[key] = _Cluster(key, spec)
        cluster.refs += 1
        return cluster


def _release_cluster(cluster: _Cluster) -> None:
    with _clusters_lock:
        cluster.refs -= 1
        if cluster.refs:
            return
        del _clusters[cluster.key]
    lib().rados_shutdown(cluster.handle)


class _IoVec(ctypes.Structure):
    """struct iovec"""

    _fields_ = [("base", c_void_p), ("length", ctypes.c_size_t)]


class _Request:
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


class RbdError(OSError):
    """An image cannot be reached, opened or created (at start: names the image)."""


def _store_error(
    err: int, where: str, op: str, offset: int | None, length: int | None
) -> StoreError:
    if err in (errno.ENOSPC, errno.EDQUOT) and op != "read":
        return SpaceExhausted(err, where, op, offset, length)
    if op == "read":
        return MediumReadError(err, where, op, offset, length)
    return MediumWriteError(err, where, op, offset, length)


async def _on_thread(fn: Callable[[], T], undo: Callable[[T], object] | None = None) -> T:
    """``fn()``, a blocking librbd job, run on a worker thread. A cancel does not stop a
    thread: cancelled, this still waits for the job to end (and then runs ``undo`` on
    its result, if it succeeded) before it raises CancelledError, so nothing of the job
    runs once the caller is told it stopped, and the caller may close the image."""
    loop = asyncio.get_running_loop()
    job = loop.run_in_executor(None, fn)
    try:
        return await outlast(job)
    except asyncio.CancelledError:
        if undo is not None and job.exception() is None:
            cleanup = loop.run_in_executor(None, undo, job.result())
            try:
                await outlast(cleanup)
            except asyncio.CancelledError:
                pass  # cancelled again: it has ended all the same, and this one raises
            except Exception as err:
                log.warning("undoing a cancelled librbd job failed: %s", err)
        raise


def _buffer_address(data: bytes | bytearray | memoryview) -> tuple[int, object]:
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


class RbdImage:
    """An open RBD image of ``size`` bytes, served through librbd's asynchronous calls."""

    def __init__(self, spec: RbdSpec, *, read_only: bool = False) -> None:
        self.spec = spec
        self.read_only = read_only
        self.path = f"rbd:{spec.name}"  # how errors name the store
        self._cluster: _Cluster | None = None
        self._ioctx = c_void_p()
        self._image = c_void_p()
        self._efd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        # The allocation this client keeps is exact while it is the image's only writer.
        self.allocation_known = True
        self._open()
        # Requests librbd holds, by completion: each a group of one or more (merged).
        self._pending: dict[int, tuple[list[_Request], object]] = {}
        # Reads and writes asked for in this turn of the loop, not yet given to librbd.
        self._plug: list[_Request] = []
        self.merged_requests = 0  # reads and writes that went to librbd merged with others
        self._polled = (c_void_p * _POLL_BATCH)()
        # librbd (16.2) leaves compare-and-write out of the eventfd notification: that one
        # completion calls back on librbd's thread, which queues it here and signals the fd.
        self._called_back: deque[int] = deque()
        self._callback = _COMPLETION_CALLBACK(self._completed_on_librbd_thread)
        self._callback_ptr = ctypes.cast(self._callback, c_void_p)

    def _open(self) -> None:
        """Connect (or share a connection), open the image, read its allocation."""
        spec = self.spec
        self._cluster = _acquire_cluster(spec)
        try:
            check(
                lib().rados_ioctx_create(
                    self._cluster.handle, spec.pool.encode(), byref(self._ioctx)
                ),
                f"pool {spec.pool!r}",
            )
            if spec.namespace:
                lib().rados_ioctx_set_namespace(self._ioctx, spec.namespace.encode())
            self._open_or_create()
            size = c_uint64()
            check(lib().rbd_get_size(self._image, byref(size)), "rbd_get_size")
            features = c_uint64()
            check(lib().rbd_get_features(self._image, byref(features)), "rbd_get_features")
            self.size = size.value
            self.features = features.value
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            check(
                lib().rbd_set_image_notification(self._image, self._efd, EVENT_TYPE_EVENTFD),
                "rbd_set_image_notification",
            )
            self.allocation = Allocation(self.size)
            self._read_allocation(self.allocation)
        except OSError as exc:
            self._teardown()
            raise RbdError(exc.errno or errno.EIO, f"rbd image {spec.name}: {exc}") from exc
        except BaseException:
            self._teardown()
            raise

    async def reopen(self) -> None:
        """Close the image and open it again as a new client of the cluster (after this
        client was blocklisted: every call of the old one fails with ESHUTDOWN). Requests
        still in flight on the old image fail first (librbd ends them when it closes).

        Closing and opening are one job on a worker thread: a cancelled reopen still waits
        for both, so the image is never left closed (a null image, which any later call,
        or the next close, would hand librbd) and the old one's requests are always ended."""
        if self._efd >= 0 and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._efd)
        self._loop = None

        def close_and_open() -> None:
            self._teardown()
            self._open()

        try:
            await _on_thread(close_and_open)
        finally:
            plug, self._plug = self._plug, []
            for group in [plug, *(group for group, _ in self._pending.values())]:
                for request in group:
                    request.finish(-errno.ESHUTDOWN)
            self._pending.clear()
            self._called_back.clear()

    def _open_or_create(self) -> None:
        spec = self.spec
        name = spec.image.encode()
        snap = spec.snapshot.encode() or None
        ret = lib().rbd_open(self._ioctx, name, byref(self._image), snap)
        if snap is not None:
            check(ret, f"opening snapshot {spec.snapshot!r}")
            return
        if ret == -errno.ENOENT and spec.create_size is not None and not self.read_only:
            order = c_int(0)
            check(
                lib().rbd_create(self._ioctx, name, spec.create_size, byref(order)),
                "creating the image",
            )
            log.info("created rbd image %s (%d bytes)", spec.name, spec.create_size)
            ret = lib().rbd_open(self._ioctx, name, byref(self._image), None)
        if ret == -errno.ENOENT:
            raise OSError(errno.ENOENT, "no such image (set create = true and size to make it)")
        check(ret, "opening the image")

    def _read_allocation(self, into: Allocation) -> None:
        """Fill ``into`` from ``diff_iterate`` (blocking: at open, or in a worker thread)."""
        whole = bool(self.features & RBD_FEATURE_FAST_DIFF) and self.size > WHOLE_OBJECT_ABOVE

        def on_extent(offset: int, length: int, exists: int, _arg: object) -> int:
            if exists:
                into.add(offset, offset + length)
            return 0

        callback = DIFF_CALLBACK(on_extent)
        check(
            lib().rbd_diff_iterate2(self._image, None, 0, self.size, 1, int(whole), callback, None),
            "diff_iterate",
        )

    async def reload_allocation(self) -> None:
        """Read the allocation from the cluster again (after another client wrote)."""
        fresh = Allocation(self.size)
        await _on_thread(lambda: self._read_allocation(fresh))
        self.allocation = fresh

    # -- completions --------------------------------------------------------------------
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
            n = lib().rbd_poll_io_events(self._image, polled, _POLL_BATCH)
            for i in range(max(n, 0)):
                self._finish(polled[i])
            if n < _POLL_BATCH:
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
    ) -> _Cluster:
        """Count one request in the client's budget (waiting while it is full)."""
        cluster = self._cluster
        if cluster is None or not self._image:  # closed, or being reopened after a fence
            raise _store_error(errno.ESHUTDOWN, self.path, op, offset, length)
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
        Reads and writes asked for before it go to librbd first (submission order)."""
        cluster = await self._admit(op, offset, length, data_bytes)
        try:
            loop = self._attach()
            if self._plug:
                self._unplug()
            request = _Request(loop.create_future())
            comp = self._completion([request], keep, callback)
            if comp is not None:
                self._submitted(comp, submit(comp))  # type: ignore[operator]
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
            request = _Request(loop.create_future(), write, offset, n, addr, keep)
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
        image = self._image
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
                    self._submitted(comp, aio(image, first.offset, first.length, first.addr, comp))
            else:
                group = plug[i:j]
                self.merged_requests += len(group)
                iov = (_IoVec * len(group))()
                for k, request in enumerate(group):
                    iov[k].base = request.addr
                    iov[k].length = request.length
                comp = self._completion(group, (iov, [r.keep for r in group]), False)
                if comp is not None:
                    aiov = rbd.rbd_aio_writev if first.write else rbd.rbd_aio_readv
                    self._submitted(comp, aiov(image, iov, len(group), first.offset, comp))
            i = j

    def _completion(self, group: list[_Request], keep: object, callback: bool) -> c_void_p | None:
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
            group, _ = self._pending.pop(comp.value or 0)
            lib().rbd_aio_release(comp)
            for request in group:
                request.finish(ret)

    async def _wait(
        self, request: _Request, op: str, offset: int | None, length: int | None
    ) -> int:
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
            raise _store_error(-ret, self.path, op, offset, length)
        return ret

    # -- data path ----------------------------------------------------------------------
    async def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset``; unwritten ranges read as zeros."""
        n = buf.nbytes
        if not n:
            return
        addr, keep = _buffer_address(buf)
        await self._io(False, offset, n, addr, keep)

    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        """Write ``data`` at ``offset``; with ``fua``, held by the cluster before returning."""
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        if n:
            addr, keep = _buffer_address(data)
            await self._io(True, offset, n, addr, keep)
            self.allocation.add(offset, offset + n)
        if fua and self.spec.cache != "none":
            await self.flush()

    async def flush(self) -> None:
        """Everything written so far is held by the cluster (librbd's cache flushed)."""
        image = self._image
        await self._run("flush", None, None, None, lambda c: lib().rbd_aio_flush(image, c))

    async def punch_hole(self, offset: int, length: int) -> None:
        """Discard ``[offset, offset+length)``; it reads as zeros afterwards."""
        if length <= 0:
            return
        image = self._image
        await self._run(
            "write", offset, length, None, lambda c: lib().rbd_aio_discard(image, offset, length, c)
        )
        self.allocation.remove(offset, offset + length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros."""
        if length <= 0:
            return
        image = self._image
        await self._run(
            "write",
            offset,
            length,
            None,
            lambda c: lib().rbd_aio_write_zeroes(image, offset, length, c, 0, 0),
        )
        self.allocation.add(offset, offset + length)

    async def compare_and_write(
        self,
        offset: int,
        expected: bytes | memoryview,
        data: bytes | memoryview,
        *,
        fua: bool = False,
    ) -> int | None:
        """Write ``data`` at ``offset`` only if the image holds ``expected`` there, as one
        operation in the cluster (no other client's write interleaves). Returns None when
        written, else the offset (from ``offset``) of the first byte that differed.

        librbd serves this only within one object; a range that crosses an object
        boundary raises ``NotImplementedError``, for the caller to compare by other means.
        """
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        cmp_addr, cmp_keep = _buffer_address(expected)
        addr, keep = _buffer_address(data)
        mismatch = c_uint64(0)
        image = self._image
        try:
            await self._run(
                "write",
                offset,
                n,
                (cmp_keep, keep, mismatch),
                lambda c: lib().rbd_aio_compare_and_write(
                    image, offset, n, cmp_addr, addr, c, byref(mismatch), 0
                ),
                callback=True,
                data_bytes=2 * n,
            )
        except StoreError as exc:
            if exc.errno == errno.EILSEQ:
                return mismatch.value
            if exc.errno == errno.EINVAL:
                raise NotImplementedError("compare and write across an object boundary") from exc
            raise
        self.allocation.add(offset, offset + n)
        if fua and self.spec.cache != "none":
            await self.flush()
        return None

    def extents(self, offset: int, length: int) -> list[Extent]:
        """The mapped and unmapped runs covering ``[offset, offset+length)``, in order.
        While another client may be writing (``allocation_known`` false: a gateway that
        does not hold the lock), every byte counts as mapped, so nothing that reads the
        image by its extents (EXTENDED COPY) skips what the other client wrote."""
        if not self.allocation_known:
            return [Extent(offset, length, True)] if length > 0 else []
        return self.allocation.extents(offset, length)

    # -- snapshots: a pair's split-instant image (backing/pairs/engine.py) ---------------
    async def freeze(self, name: str) -> RbdImage:
        """Take snapshot ``name`` of the image and open it: the image as it is now, read
        only, whatever is written afterwards. librbd holds writes back while it takes it.

        Cancelled (the pair stopping), it still waits for the worker thread and removes
        the snapshot it made: nothing names it yet."""
        image = self._image
        spec = replace(self.spec, snapshot=name, create_size=None)

        def take() -> RbdImage:
            check(lib().rbd_snap_create(image, name.encode()), "rbd_snap_create")
            try:
                return RbdImage(spec, read_only=True)
            except BaseException:
                self._remove_snapshot(image, name)
                raise

        def undo(frozen: RbdImage) -> None:
            frozen.close()
            self._remove_snapshot(image, name)

        return await _on_thread(take, undo)

    async def open_frozen(self, name: str) -> RbdImage:
        """Open snapshot ``name``, taken by :meth:`freeze` (after a restart). Cancelled,
        it closes the view it opened before it returns."""
        spec = replace(self.spec, snapshot=name, create_size=None)
        return await _on_thread(lambda: RbdImage(spec, read_only=True), RbdImage.close)

    async def thaw(self, frozen: RbdImage | None, name: str) -> None:
        """Close ``frozen`` (if open) and remove snapshot ``name`` (gone already: fine).
        Cancelled, it returns only once the close or removal under way has ended (the
        snapshot is then either gone or still there, never half removed as the image
        closes)."""
        if frozen is not None:
            await frozen.aclose()
        image = self._image
        ret = await _on_thread(lambda: self._remove_snapshot(image, name))
        if ret != -errno.ENOENT:
            check(ret, "rbd_snap_remove")

    def _remove_snapshot(self, image: c_void_p, name: str) -> int:
        """Remove snapshot ``name`` of ``image`` (blocking: on a worker thread)."""
        return int(lib().rbd_snap_remove(image, name.encode()))

    async def snapshot_names(self) -> list[str]:
        """The names of the image's snapshots."""
        image = self._image

        def names() -> list[str]:
            count = c_int(16)
            while True:
                table = (SnapInfo * count.value)()
                ret = lib().rbd_snap_list(image, table, byref(count))
                if ret != -errno.ERANGE:
                    break
            check(ret, "rbd_snap_list")
            found = [(table[i].name or b"").decode() for i in range(ret)]
            lib().rbd_snap_list_end(table)
            return found

        return await _on_thread(names)

    # -- the exclusive lock (two gateways, one image) ------------------------------------
    async def acquire_lock(self) -> None:
        """Take RBD's exclusive lock and keep it (librbd stops handing it over on request).
        Cancelled while librbd takes it, this gives it back before raising: no lock is held
        that the caller does not know of."""
        image = self._image
        await _on_thread(lambda: self._take_lock(image), undo=lambda _: self._release_lock(image))

    def _take_lock(self, image: c_void_p) -> None:
        check(lib().rbd_lock_acquire(image, RBD_LOCK_MODE_EXCLUSIVE), "rbd_lock_acquire")

    def _release_lock(self, image: c_void_p) -> None:
        check(lib().rbd_lock_release(image), "rbd_lock_release")

    async def release_lock(self) -> None:
        image = self._image
        await _on_thread(lambda: self._release_lock(image))

    async def lock_owners(self) -> list[str]:
        """The clients holding the exclusive lock, by address (empty: nobody)."""

        def owners() -> list[str]:
            mode = c_int(0)
            table = (ctypes.c_char_p * 4)()
            count = ctypes.c_size_t(4)
            ret = lib().rbd_lock_get_owners(self._image, byref(mode), table, byref(count))
            if ret == -errno.ENOENT:
                return []
            check(ret, "rbd_lock_get_owners")
            found = [(table[i] or b"").decode() for i in range(count.value)]
            lib().rbd_lock_get_owners_cleanup(table, count.value)
            return found

        return await _on_thread(owners)

    async def break_lock(self, owner: str) -> None:
        """Take the lock away from ``owner``: the cluster blocklists that client first,
        so nothing it still sends reaches the image."""
        image = self._image
        await _on_thread(
            lambda: check(
                lib().rbd_lock_break(image, RBD_LOCK_MODE_EXCLUSIVE, owner.encode()),
                "rbd_lock_break",
            )
        )

    @property
    def address(self) -> str:
        """This client's address, as lock owners and the blocklist name it."""
        assert self._cluster is not None
        return self._cluster.address

    @property
    def image_id(self) -> str:
        buf = ctypes.create_string_buffer(64)
        check(lib().rbd_get_id(self._image, buf, 64), "rbd_get_id")
        return buf.value.decode()

    @property
    def ioctx(self) -> c_void_p:
        return self._ioctx

    def unblocklist(self, address: str) -> None:
        """Remove ``address`` (an old client of ours, shut down) from the blocklist
        (blocking: a monitor command)."""
        assert self._cluster is not None
        self._cluster.mon_command({"prefix": "osd blocklist", "blocklistop": "rm", "addr": address})

    def release_lock_now(self) -> None:
        """``release_lock``, blocking (at shutdown)."""
        check(lib().rbd_lock_release(self._image), "rbd_lock_release")

    def is_lock_owner(self) -> bool:
        owner = c_int(0)
        check(lib().rbd_is_exclusive_lock_owner(self._image, byref(owner)), "lock owner")
        return bool(owner.value)

    # -- life cycle ---------------------------------------------------------------------
    async def aclose(self) -> None:
        """:meth:`close` from the event loop: its reader leaves the loop here, and the
        blocking close runs in a worker thread."""
        if self._efd >= 0 and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._efd)
        self._loop = None
        await _on_thread(self.close)

    def close(self) -> None:
        """Close the image (blocking: librbd flushes and releases its lock)."""
        if self._pending or self._plug:
            in_flight = len(self._plug) + sum(len(g) for g, _ in self._pending.values())
            log.warning("%s: closing with %d requests in flight", self.path, in_flight)
        self._teardown()

    def _teardown(self) -> None:
        if self._efd >= 0:
            loop = getattr(self, "_loop", None)
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self._efd)
        if self._image:
            lib().rbd_close(self._image)
            self._image = c_void_p()
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1
        if self._ioctx:
            lib().rados_ioctx_destroy(self._ioctx)
            self._ioctx = c_void_p()
        if self._cluster is not None:
            _release_cluster(self._cluster)
            self._cluster = None

    def __repr__(self) -> str:
        return f"RbdImage({self.spec.name!r}, size={self.size})"
