"""An RBD image as a block store: librbd's asynchronous calls, completed on the event loop.

This module knows nothing of SCSI. Offsets and lengths are in bytes. It offers what
``SparseFile`` offers (``read_into``, ``write``, ``flush``, ``punch_hole``,
``write_zeroes``, ``extents``, ``close``) plus ``compare_and_write``, atomic in the cluster.
Requests and their completions: ``backing/rbd_requests.py``; the rados clients images
share: ``backing/rbd_cluster.py``.

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
from collections.abc import Callable
from ctypes import byref, c_int, c_uint64, c_void_p
from dataclasses import replace
from functools import partial
from typing import TypeVar

from backing import rbd_previous
from backing.errors import StoreError
from backing.rbd_allocation import Allocation
from backing.rbd_calls import ThreadCalls
from backing.rbd_cluster import CACHE_MODES, Cluster, RbdSpec, acquire_cluster, release_cluster
from backing.rbd_lib import (
    DIFF_CALLBACK,
    EVENT_TYPE_EVENTFD,
    RBD_FEATURE_FAST_DIFF,
    RBD_LOCK_MODE_EXCLUSIVE,
    UPDATE_CALLBACK,
    SnapInfo,
    check,
    lib,
)
from backing.rbd_requests import ImageRequests, buffer_address
from backing.sparse_file import Extent
from backing.threads import outlast

__all__ = ["CACHE_MODES", "WHOLE_OBJECT_ABOVE", "RbdError", "RbdImage", "RbdSpec"]

log = logging.getLogger("targetd.rbd")

T = TypeVar("T")

# Above this size the allocation is read per object from the object map (fast-diff), not
# per byte range: exact ranges would mean asking every object, slow for a large image.
WHOLE_OBJECT_ABOVE = 16 << 30
# How long a close waits for librbd calls still running on worker threads (a snapshot, a
# lock call, an allocation read: each bounded by the OSD op timeout, 30 s by default)
# before it leaves the image to close when the last of them ends, and says so.
CLOSE_WAIT = 60.0
# How long one reopen after a fence waits for the old client's calls before it gives up
# (the gateway answers NOT READY meanwhile, says which calls hang, and tries again).
REOPEN_WAIT = 10.0


class RbdError(OSError):
    """An image cannot be reached, opened or created (at start: names the image)."""


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


class RbdImage(ImageRequests):
    """An open RBD image of ``size`` bytes, served through librbd's asynchronous calls."""

    def __init__(self, spec: RbdSpec, *, read_only: bool = False) -> None:
        self.spec = spec
        self.read_only = read_only
        self.path = f"rbd:{spec.name}"  # how errors name the store
        self._cluster: Cluster | None = None
        self._ioctx = c_void_p()
        self._image = c_void_p()
        self._efd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        # The allocation this client keeps is exact while it is the image's only writer.
        self.allocation_known = True
        # Blocking librbd calls on worker threads still running (``_call``), counted on the
        # event loop, from the call until its undo (if any) has ended: a reopen or an
        # ``aclose`` waits for every one of them before it closes the handle they use.
        self._calls = 0
        # The same calls counted on their threads: ``close`` (from any thread) waits for
        # them, and one that starts after the handle it was bound to closed never runs.
        self._threads = ThreadCalls(self.path)
        self._closing = False  # closed or closing: no new call
        self.close_wait = CLOSE_WAIT
        self.reopen_wait = REOPEN_WAIT
        # librbd calls this on its own thread when the image's header changed (another
        # client resized it...): with a loop and a handler (``follow_size``), the size is
        # read again there, and a larger one handed to the handler.
        self._header_watch = c_uint64()
        self._watching = False
        self._on_update = UPDATE_CALLBACK(self._header_updated)  # kept alive with the image
        self._size_loop: asyncio.AbstractEventLoop | None = None
        self._on_grown: Callable[[int], None] | None = None
        self._size_check: asyncio.Future[None] | None = None
        self._check_again = False
        self._open()
        super().__init__()

    def _open(self) -> None:
        """Connect (or share a connection), open the image, read its allocation."""
        spec = self.spec
        self._cluster = acquire_cluster(spec)
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
            if not spec.snapshot:  # the previous run's dead watch goes now, not in 30 s
                rbd_previous.fence(self._cluster.handle, self._image, self.path,
                                   self._cluster.address)  # fmt: skip
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
            self._read_allocation(self._image, self.allocation)
            ret = lib().rbd_update_watch(
                self._image, byref(self._header_watch), self._on_update, None
            )
            self._watching = ret == 0
            if ret < 0:  # the LUN still serves; only a reload then sees it grown
                log.warning("%s: its header is not watched: %s", self.path, os.strerror(-ret))
        except OSError as exc:
            self._teardown()
            raise RbdError(exc.errno or errno.EIO, f"rbd image {spec.name}: {exc}") from exc
        except BaseException:
            self._teardown()
            raise

    async def reopen(self) -> None:
        """Close the image and open it again as a new client of the cluster (after this
        client was blocklisted: every call of the old one fails with ESHUTDOWN).

        From the moment it is called, new requests and calls fail with ESHUTDOWN; it then
        waits for every blocking call still running on the old handle (a call cannot be
        stopped, and one that ran on after the close would use a closed handle), for up to
        ``reopen_wait`` seconds: past that it raises ETIMEDOUT naming the calls still
        running, and the image stays open as it was (the caller tries again later).
        Requests still in flight on the old image fail first (librbd ends them when it
        closes). Cancelled while it waits, the image stays open as it was.

        Closing and opening are one job on a worker thread: a cancelled reopen still waits
        for both, so the image is never left closed (a null image, which any later call,
        or the next close, would hand librbd) and the old one's requests are always ended."""
        self._reopening = True
        try:
            if not await self._calls_end(self.reopen_wait):
                raise OSError(
                    errno.ETIMEDOUT,
                    f"{self.path}: not reopened: librbd calls on the old client still running"
                    f" after {self.reopen_wait:g} s ({self._threads.describe() or 'ending'})",
                )
        except BaseException:
            self._reopening = False
            raise
        if self._efd >= 0 and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._efd)
        self._loop = None

        def close_and_open() -> None:
            if not self._threads.retire(self.reopen_wait):  # every call came through _call
                raise OSError(errno.ETIMEDOUT, f"{self.path}: not reopened: calls running")
            self._teardown()
            self._open()

        try:
            await _on_thread(close_and_open)
        finally:
            self._generation += 1
            plug, self._plug = self._plug, []
            for group in [plug, *(group for group, _ in self._pending.values())]:
                for request in group:
                    request.finish(-errno.ESHUTDOWN)
            self._pending.clear()
            self._called_back.clear()
            self._reopening = False

    async def _calls_end(self, wait: float) -> bool:
        """Wait up to ``wait`` seconds for every :meth:`_call` to end (False: some still
        run)."""
        deadline = asyncio.get_running_loop().time() + wait
        while self._calls:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def run_blocking(self, fn: Callable[[], T], what: str = "a notify") -> T:
        """``fn()``, a blocking call on this image's client or io context (a watch's
        notify), on a worker thread, counted as :meth:`_call` counts librbd's."""
        return await self._call(fn, what=what)

    async def _call(
        self, fn: Callable[[], T], undo: Callable[[T], object] | None = None, *, what: str
    ) -> T:
        """``_on_thread(fn, undo)``, counted as a call on the open handle (a reopen or a
        close waits for it; one asked for while either is under way fails with ESHUTDOWN).
        ``what`` names it in the log of a close that waits for it too long."""
        if self._reopening:
            raise OSError(errno.ESHUTDOWN, f"{self.path}: being reopened")
        if self._closing:
            raise OSError(errno.ESHUTDOWN, f"{self.path}: closed")
        threads = self._threads
        self._calls += 1
        try:
            return await _on_thread(
                threads.bind(fn, what), None if undo is None else threads.bind_undo(undo, what)
            )
        finally:
            self._calls -= 1

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

    def _read_allocation(self, image: c_void_p, into: Allocation) -> None:
        """Fill ``into`` from ``image``'s ``diff_iterate`` (blocking: at open, or in a
        worker thread)."""
        whole = bool(self.features & RBD_FEATURE_FAST_DIFF) and self.size > WHOLE_OBJECT_ABOVE

        def on_extent(offset: int, length: int, exists: int, _arg: object) -> int:
            if exists:
                into.add(offset, offset + length)
            return 0

        callback = DIFF_CALLBACK(on_extent)
        check(
            lib().rbd_diff_iterate2(image, None, 0, self.size, 1, int(whole), callback, None),
            "diff_iterate",
        )

    async def read_size(self) -> int:
        """The image's size as the cluster has it now: another client (``rbd resize``) may
        have changed it since the open (librbd refreshes the header when told it changed)."""
        image = self._image

        def get() -> int:
            size = c_uint64()
            check(lib().rbd_get_size(image, byref(size)), "rbd_get_size")
            return size.value

        return await self._call(get, what="rbd_get_size")

    def grow(self, size: int) -> None:
        """Serve ``size`` bytes: the image has grown to at least that (:meth:`read_size`).
        The daemon never resizes an image itself (docs/rbd.md, "Creating images")."""
        if size <= self.size:
            raise ValueError(f"{self.path}: {size} bytes is not larger than {self.size}")
        self.size = size
        self.allocation.grow(size)

    def follow_size(self, on_grown: Callable[[int], None]) -> None:
        """From now on, on the event loop this is called on: ``on_grown(size)`` whenever the
        image is found larger than :attr:`size` after another client changed its header
        (``rbd resize``, or another gateway): docs/rbd.md, "Growing an RBD LUN"."""
        self._size_loop = asyncio.get_running_loop()
        self._on_grown = on_grown

    def _header_updated(self, _arg: object) -> None:
        """librbd's thread: the header changed. Only a hand-over to the loop happens here."""
        loop = self._size_loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._check_size)

    def _check_size(self) -> None:
        if self._closing:
            return
        if self._size_check is not None and not self._size_check.done():
            self._check_again = True  # read again once the read under way ends
            return
        self._size_check = asyncio.ensure_future(self._follow_size())

    async def _follow_size(self) -> None:
        while True:
            self._check_again = False
            try:
                size = await self.read_size()
            except OSError as err:
                if not self._closing:
                    log.warning("%s: its size not read after a change: %s", self.path, err)
                return
            if size > self.size and self._on_grown is not None:
                self._on_grown(size)
            elif size < self.size:
                log.warning(
                    "%s: shrunk to %d bytes by another client: still served as %d bytes",
                    self.path, size, self.size,
                )  # fmt: skip
            if not self._check_again:
                return

    async def reload_allocation(self) -> None:
        """Read the allocation from the cluster again (after another client wrote)."""
        fresh = Allocation(self.size)
        image = self._image
        await self._call(lambda: self._read_allocation(image, fresh), what="diff_iterate")
        self.allocation = fresh

    # -- data path ----------------------------------------------------------------------
    async def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset``; unwritten ranges read as zeros."""
        n = buf.nbytes
        if not n:
            return
        addr, keep = buffer_address(buf)
        await self._io(False, offset, n, addr, keep)

    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        """Write ``data`` at ``offset``; with ``fua``, held by the cluster before returning."""
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        if n:
            addr, keep = buffer_address(data)
            await self._io(True, offset, n, addr, keep)
            self.allocation.add(offset, offset + n)
        if fua and self.spec.cache != "none":
            await self.flush()

    async def flush(self) -> None:
        """Everything written so far is held by the cluster (librbd's cache flushed)."""
        image = self._image
        try:
            await self._run("flush", None, None, None, lambda c: lib().rbd_aio_flush(image, c))
        except OSError as err:
            # librbd refuses a flush with EROFS from a client that does not hold the
            # image's exclusive lock (the other gateway's path, which dm-multipath may send
            # a flush down). With its cache off that client has nothing to flush: each of
            # its writes was acknowledged only once the OSDs had it.
            if err.errno != errno.EROFS or self.spec.cache != "none":
                raise

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
        cmp_addr, cmp_keep = buffer_address(expected)
        addr, keep = buffer_address(data)
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

        return await self._call(take, undo, what="rbd_snap_create")

    async def open_frozen(self, name: str) -> RbdImage:
        """Open snapshot ``name``, taken by :meth:`freeze` (after a restart). Cancelled,
        it closes the view it opened before it returns."""
        spec = replace(self.spec, snapshot=name, create_size=None)
        return await self._call(
            lambda: RbdImage(spec, read_only=True), RbdImage.close, what="opening a snapshot"
        )

    async def thaw(self, frozen: RbdImage | None, name: str) -> None:
        """Close ``frozen`` (if open) and remove snapshot ``name`` (gone already: fine).
        Cancelled, it returns only once the close or removal under way has ended (the
        snapshot is then either gone or still there, never half removed as the image
        closes)."""
        if frozen is not None:
            await frozen.aclose()
        image = self._image
        ret = await self._call(lambda: self._remove_snapshot(image, name), what="rbd_snap_remove")
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

        return await self._call(names, what="rbd_snap_list")

    # -- the exclusive lock (two gateways, one image) ------------------------------------
    async def acquire_lock(self) -> None:
        """Take RBD's exclusive lock and keep it (librbd stops handing it over on request).
        Cancelled while librbd takes it, this gives it back before raising: no lock is held
        that the caller does not know of."""
        image = self._image
        await self._call(
            lambda: self._take_lock(image),
            undo=lambda _: self._release_lock(image),
            what="rbd_lock_acquire",
        )

    def _take_lock(self, image: c_void_p) -> None:
        check(lib().rbd_lock_acquire(image, RBD_LOCK_MODE_EXCLUSIVE), "rbd_lock_acquire")

    def _release_lock(self, image: c_void_p) -> None:
        check(lib().rbd_lock_release(image), "rbd_lock_release")

    async def release_lock(self) -> None:
        image = self._image
        await self._call(lambda: self._release_lock(image), what="rbd_lock_release")

    async def lock_owners(self) -> list[str]:
        """The clients holding the exclusive lock, by address (empty: nobody)."""
        image = self._image

        def owners() -> list[str]:
            mode = c_int(0)
            table = (ctypes.c_char_p * 4)()
            count = ctypes.c_size_t(4)
            ret = lib().rbd_lock_get_owners(image, byref(mode), table, byref(count))
            if ret == -errno.ENOENT:
                return []
            check(ret, "rbd_lock_get_owners")
            found = [(table[i] or b"").decode() for i in range(count.value)]
            lib().rbd_lock_get_owners_cleanup(table, count.value)
            return found

        return await self._call(owners, what="rbd_lock_get_owners")

    async def break_lock(self, owner: str) -> None:
        """Take the lock away from ``owner``: the cluster blocklists that client first,
        so nothing it still sends reaches the image."""
        image = self._image
        await self._call(
            lambda: check(
                lib().rbd_lock_break(image, RBD_LOCK_MODE_EXCLUSIVE, owner.encode()),
                "rbd_lock_break",
            ),
            what="rbd_lock_break",
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

    @property
    def instance_id(self) -> int:
        """This client's id in the cluster (as a notify's acknowledgements name it)."""
        assert self._cluster is not None
        return int(lib().rados_get_instance_id(self._cluster.handle))

    def blocklist(self, address: str) -> None:
        """Blocklist the client at ``address`` (another gateway's, proved dead; blocking):
        the OSDs drop its watches, so no notification waits for them any more."""
        assert self._cluster is not None
        check(lib().rados_blocklist_add(self._cluster.handle, address.encode(), 0),
              f"blocklisting {address}")  # fmt: skip

    def release_lock_now(self) -> None:
        """``release_lock``, blocking (at shutdown)."""
        check(lib().rbd_lock_release(self._image), "rbd_lock_release")

    def is_lock_owner(self) -> bool:
        owner = c_int(0)
        check(lib().rbd_is_exclusive_lock_owner(self._image, byref(owner)), "lock owner")
        return bool(owner.value)

    # -- life cycle ---------------------------------------------------------------------
    def leave_loop(self) -> None:
        """On the event loop, before a :meth:`close` on a worker thread: the completion
        reader leaves the loop (a loop's readers are not to be touched from another
        thread)."""
        if self._efd >= 0 and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._efd)
        self._loop = None

    async def aclose(self) -> None:
        """:meth:`close` from the event loop: its reader leaves the loop here, it waits
        for the blocking calls of :meth:`_call` still running (an undo after a cancel
        included), and the blocking close runs in a worker thread."""
        self.leave_loop()
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_wait
        await self._calls_end(self.close_wait)
        await _on_thread(partial(self.close, max(0.0, deadline - loop.time())))

    def close(self, wait: float | None = None) -> None:
        """Close the image (blocking: librbd flushes and releases its lock), once every
        blocking librbd call still running on a worker thread has ended: one cannot be
        stopped, and closing under it would hand librbd a freed image. A call that runs
        on for longer than ``wait`` seconds (``close_wait`` by default) is logged, and the
        image then closes when the last call ends, on that call's thread."""
        self._closing = True
        if self._pending or self._plug:
            in_flight = len(self._plug) + sum(len(g) for g, _ in self._pending.values())
            log.warning("%s: closing with %d requests in flight", self.path, in_flight)
        wait = self.close_wait if wait is None else wait
        if not self._threads.retire_when_idle(wait, self._teardown):
            log.error(
                "%s: librbd calls still running %g s after the close (%s): the image "
                "closes when they end",
                self.path,
                wait,
                self._threads.describe() or "ending",
            )

    def _teardown(self) -> None:
        if self._efd >= 0:
            loop = getattr(self, "_loop", None)
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self._efd)
        self._stop_submitter()
        if self._watching:
            lib().rbd_update_unwatch(self._image, self._header_watch.value)
            self._watching = False
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
            release_cluster(self._cluster)
            self._cluster = None

    def __repr__(self) -> str:
        return f"RbdImage({self.spec.name!r}, size={self.size})"
