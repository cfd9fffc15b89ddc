"""One small RADOS object with a version, changed only by compare-and-swap, and watched.

It knows nothing of what it holds. The body is replaced whole; the version lives in the
xattr ``targetd.version`` (ASCII decimal). :meth:`RadosObject.replace` writes the new body
and version in one RADOS write operation guarded by ``cmpxattr(version == expected)`` (or,
for the first one, an exclusive create), so of two writers that read the same version
exactly one succeeds and the other learns it lost. :meth:`notify` tells every watcher
(``rados_notify2``) and waits, up to a timeout, until each has acknowledged; a watcher's
callback runs on a librados thread and returns its reply there.

Through librados's C API with ctypes, as backing/rbd_lib.py does for librbd: Debian's
Python binding (python3-rados) would be one more package, for Debian's interpreter only,
and the calls needed here (a compound write operation with cmpxattr, watch2/notify2 with
acknowledgement payloads) are all in the C library the daemon already loads.

Every call that waits on the cluster blocks: the caller runs it in a worker thread (the
event loop never calls these). The object has its own rados client, with its own
operation timeouts, so a call against an unreachable cluster ends with ETIMEDOUT after
``timeout`` seconds instead of hanging, without touching the data path's settings.

A close waits for the calls still running on other threads (:meth:`RadosObject.close`):
the client shut down under one of them made it wait forever, or crashed the daemon (a
gateway rejoining after a fence closed its old client while a write's re-read of the
reservations still ran on it). From the close on, a new call is refused with ESHUTDOWN.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import struct
import threading
from collections.abc import Callable
from ctypes import CFUNCTYPE, POINTER, byref, c_char_p, c_int, c_size_t, c_uint64, c_void_p
from typing import ParamSpec, TypeVar

from backing import rbd_previous
from backing.rbd_calls import ThreadCalls
from backing.rbd_lib import TypedFunctions, check, client_address, lib, mon_command

log = logging.getLogger("targetd.rados")

VERSION_XATTR = b"targetd.version"
CMPXATTR_OP_EQ = 1  # librados.h LIBRADOS_CMPXATTR_OP_EQ
CREATE_EXCLUSIVE = 1
MAX_BODY = 1 << 20
# A close waits this long beyond the client's operation timeout for the calls in flight
# (each is bounded by that timeout, a notification by its own, at most this much more).
CLOSE_MARGIN = 10.0

P = ParamSpec("P")
T = TypeVar("T")

# void (*rados_watchcb2_t)(void *arg, uint64_t notify_id, uint64_t handle,
#                          uint64_t notifier_id, void *data, size_t data_len)
WATCH_CALLBACK = CFUNCTYPE(None, c_void_p, c_uint64, c_uint64, c_uint64, c_void_p, c_size_t)
# void (*rados_watcherrcb_t)(void *pre, uint64_t cookie, int err)
WATCH_ERROR_CALLBACK = CFUNCTYPE(None, c_void_p, c_uint64, c_int)

_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "rados_get_instance_id": (c_uint64, [c_void_p]),
    "rados_read": (c_int, [c_void_p, c_char_p, c_void_p, c_size_t, c_uint64]),
    "rados_getxattr": (c_int, [c_void_p, c_char_p, c_char_p, c_void_p, c_size_t]),
    "rados_create_write_op": (c_void_p, []),
    "rados_release_write_op": (None, [c_void_p]),
    "rados_write_op_create": (None, [c_void_p, c_int, c_char_p]),
    "rados_write_op_cmpxattr": (None, [c_void_p, c_char_p, ctypes.c_uint8, c_char_p, c_size_t]),
    "rados_write_op_setxattr": (None, [c_void_p, c_char_p, c_char_p, c_size_t]),
    "rados_write_op_write_full": (None, [c_void_p, c_char_p, c_size_t]),
    "rados_write_op_write": (None, [c_void_p, c_char_p, c_size_t, c_uint64]),
    "rados_stat": (c_int, [c_void_p, c_char_p, POINTER(c_uint64), c_void_p]),
    "rados_write_op_remove": (None, [c_void_p]),
    "rados_write_op_operate": (c_int, [c_void_p, c_void_p, c_char_p, c_void_p, c_int]),
    "rados_watch2": (
        c_int,
        [c_void_p, c_char_p, POINTER(c_uint64), WATCH_CALLBACK, WATCH_ERROR_CALLBACK, c_void_p],
    ),
    "rados_unwatch2": (c_int, [c_void_p, c_uint64]),
    "rados_watch_flush": (c_int, [c_void_p]),
    "rados_notify2": (
        c_int,
        [c_void_p, c_char_p, c_char_p, c_int, c_uint64, POINTER(c_void_p), POINTER(c_size_t)],
    ),
    "rados_notify_ack": (c_int, [c_void_p, c_char_p, c_uint64, c_uint64, c_char_p, c_int]),
    "rados_buffer_free": (None, [c_void_p]),
    "rados_blocklist_add": (c_int, [c_void_p, c_char_p, ctypes.c_uint32]),
}


class _Rados(TypedFunctions):
    """The librados calls this module adds to rbd_lib's, typed (``_rados().rados_read``)."""

    def __init__(self) -> None:
        dll = ctypes.CDLL("librados.so.2", use_errno=True)
        super().__init__(_SIGNATURES, lambda _name: dll)


@functools.cache
def _rados() -> _Rados:
    return _Rados()


def decode_notify_reply(reply: bytes) -> tuple[int, int]:
    """(watchers that acknowledged, watchers that timed out) from ``rados_notify2``'s
    reply (see :func:`notify_watchers`)."""
    acked, timed_out = notify_watchers(reply)
    return len(acked), len(timed_out)


def notify_watchers(reply: bytes) -> tuple[list[int], list[int]]:
    """The client ids (gids) of the watchers that acknowledged and of those that timed out,
    from ``rados_notify2``'s reply: le32 count of acks, each (le64 gid, le64 cookie, le32
    length, payload), then le32 count of timeouts, each (le64 gid, le64 cookie)."""
    acked: list[int] = []
    timed_out: list[int] = []
    if len(reply) < 4:
        return acked, timed_out
    (acks,) = struct.unpack_from("<I", reply, 0)
    at = 4
    for _ in range(acks):
        gid, _cookie, length = struct.unpack_from("<QQI", reply, at)
        acked.append(gid)
        at += 20 + length
    (timeouts,) = struct.unpack_from("<I", reply, at) if at + 4 <= len(reply) else (0,)
    at += 4
    for _ in range(timeouts):
        gid, _cookie = struct.unpack_from("<QQ", reply, at)
        timed_out.append(gid)
        at += 16
    return acked, timed_out


def notify_payloads(reply: bytes) -> list[bytes]:
    """The acknowledgement payloads in ``rados_notify2``'s reply (see above)."""
    payloads: list[bytes] = []
    if len(reply) < 4:
        return payloads
    (acks,) = struct.unpack_from("<I", reply, 0)
    at = 4
    for _ in range(acks):
        (length,) = struct.unpack_from("<I", reply, at + 16)
        payloads.append(reply[at + 20 : at + 20 + length])
        at += 20 + length
    return payloads


def _counted(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """A blocking call of :class:`RadosObject` counted while it runs (a close waits for
    it), and refused with ESHUTDOWN once the object is closed."""

    def wrap(method: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(method)
        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            self = args[0]
            assert isinstance(self, RadosObject)
            if self._closing:  # not even while the close waits for the calls in flight
                raise OSError(errno.ESHUTDOWN, f"{self.name}: closed before {what} ran")
            with self._calls.counting(0, what):  # a closed object's handle is 1
                return method(*args, **kwargs)

        return run

    return wrap


class RadosObject:
    """``oid`` in ``pool`` (and ``namespace``), reached as ``client`` through ``ceph_conf``."""

    def __init__(
        self,
        *,
        ceph_conf: str,
        client: str,
        keyring: str,
        pool: str,
        namespace: str,
        oid: str,
        timeout: float,
    ) -> None:
        self.name = f"{pool}/{namespace + '/' if namespace else ''}{oid}"
        self.oid = oid.encode()
        self.timeout = timeout
        self._handle = c_void_p()
        self._ioctx = c_void_p()
        self._cookie: int | None = None
        self._callbacks: tuple[object, object] | None = None
        self._calls = ThreadCalls(self.name)
        self._closing = False
        rados = lib()
        check(rados.rados_create2(byref(self._handle), b"ceph", client.encode(), 0), "rados")
        try:
            check(rados.rados_conf_read_file(self._handle, ceph_conf.encode()), ceph_conf)
            options = {
                "client_mount_timeout": f"{timeout:g}",
                "rados_mon_op_timeout": f"{timeout:g}",
                "rados_osd_op_timeout": f"{timeout:g}",
                "log_to_stderr": "false",
                "err_to_stderr": "false",
            }
            if keyring:
                options["keyring"] = keyring
            for key, value in options.items():
                check(rados.rados_conf_set(self._handle, key.encode(), value.encode()), key)
            check(rados.rados_connect(self._handle), "connecting to the monitors")
            check(
                rados.rados_ioctx_create(self._handle, pool.encode(), byref(self._ioctx)),
                f"pool {pool!r}",
            )
            if namespace:
                rados.rados_ioctx_set_namespace(self._ioctx, namespace.encode())
        except BaseException:
            self._shut_down()
            raise
        self.instance_id = int(_rados().rados_get_instance_id(self._handle))
        self.address = client_address(self._handle)  # as the blocklist names this client
        rbd_previous.record(self.address)  # before it watches (a kill -9 later)

    # -- blocking calls (worker threads) ------------------------------------------------
    @_counted("rados_read")
    def read(self) -> tuple[int, bytes]:
        """(version, body); (0, b"") while the object does not exist."""
        buf = ctypes.create_string_buffer(32)
        n = _rados().rados_getxattr(self._ioctx, self.oid, VERSION_XATTR, buf, 32)
        if n in (-errno.ENOENT, -errno.ENODATA):
            return 0, b""
        check(n, f"reading {self.name}")
        version = int(buf.raw[:n])
        body = ctypes.create_string_buffer(MAX_BODY)
        got = check(_rados().rados_read(self._ioctx, self.oid, body, MAX_BODY, 0), self.name)
        return version, body.raw[:got]

    @_counted("rados_write_op_operate")
    def replace(self, expected: int, version: int, body: bytes) -> bool:
        """Write ``body`` as ``version`` if the object is still at ``expected`` (0: absent):
        False if another writer came first, OSError if the cluster said no."""
        op = _rados().rados_create_write_op()
        try:
            if expected == 0:
                _rados().rados_write_op_create(op, CREATE_EXCLUSIVE, None)
            else:
                old = str(expected).encode()
                _rados().rados_write_op_cmpxattr(op, VERSION_XATTR, CMPXATTR_OP_EQ, old, len(old))
            new = str(version).encode()
            _rados().rados_write_op_setxattr(op, VERSION_XATTR, new, len(new))
            _rados().rados_write_op_write_full(op, body, len(body))
            ret = _rados().rados_write_op_operate(op, self._ioctx, self.oid, None, 0)
        finally:
            _rados().rados_release_write_op(op)
        if ret in (-errno.ECANCELED, -errno.EEXIST, -errno.ENODATA):
            return False
        check(ret, f"writing {self.name}")
        return True

    # -- a record in pieces (a pair's header and bitmap pages, backing/pairs/cluster.py) --
    @_counted("rados_getxattr")
    def xattr(self, name: bytes) -> bytes | None:
        """The value of xattr ``name``; None while it (or the object) does not exist."""
        buf = ctypes.create_string_buffer(256)
        n = _rados().rados_getxattr(self._ioctx, self.oid, name, buf, 256)
        if n in (-errno.ENOENT, -errno.ENODATA):
            return None
        check(n, f"reading {self.name}")
        return buf.raw[:n]

    @_counted("rados_stat")
    def size(self) -> int | None:
        """The object's size in bytes; None while it does not exist."""
        size = c_uint64()
        ret = _rados().rados_stat(self._ioctx, self.oid, byref(size), None)
        if ret == -errno.ENOENT:
            return None
        check(ret, f"stat {self.name}")
        return size.value

    @_counted("rados_read")
    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer past the end)."""
        buf = ctypes.create_string_buffer(length)
        got = check(_rados().rados_read(self._ioctx, self.oid, buf, length, offset), self.name)
        return buf.raw[:got]

    @_counted("rados_write_op_operate")
    def write_guarded(
        self,
        guard: tuple[bytes, bytes] | None,
        writes: list[tuple[int, bytes]],
        xattrs: dict[bytes, bytes] | None = None,
        *,
        create: bool = False,
    ) -> bool:
        """Write each ``(offset, bytes)`` and set ``xattrs`` in one RADOS operation (all or
        nothing), only if xattr ``guard[0]`` still equals ``guard[1]`` (with ``create``:
        only if the object does not exist yet). False if the guard failed."""
        op = _rados().rados_create_write_op()
        keep: list[bytes] = []
        try:
            if create:
                _rados().rados_write_op_create(op, CREATE_EXCLUSIVE, None)
            if guard is not None:
                name, value = guard
                _rados().rados_write_op_cmpxattr(op, name, CMPXATTR_OP_EQ, value, len(value))
            for name, value in (xattrs or {}).items():
                _rados().rados_write_op_setxattr(op, name, value, len(value))
            for offset, data in writes:
                keep.append(data)
                _rados().rados_write_op_write(op, data, len(data), offset)
            ret = _rados().rados_write_op_operate(op, self._ioctx, self.oid, None, 0)
        finally:
            _rados().rados_release_write_op(op)
        if ret in (-errno.ECANCELED, -errno.EEXIST, -errno.ENODATA, -errno.ENOENT):
            return False
        check(ret, f"writing {self.name}")
        return True

    @_counted("rados_write_op_operate")
    def remove_guarded(self, guard: tuple[bytes, bytes]) -> bool:
        """Remove the object if xattr ``guard[0]`` equals ``guard[1]``; False otherwise
        (True if it is gone already)."""
        op = _rados().rados_create_write_op()
        try:
            name, value = guard
            _rados().rados_write_op_cmpxattr(op, name, CMPXATTR_OP_EQ, value, len(value))
            _rados().rados_write_op_remove(op)
            ret = _rados().rados_write_op_operate(op, self._ioctx, self.oid, None, 0)
        finally:
            _rados().rados_release_write_op(op)
        if ret == -errno.ENOENT:
            return True
        if ret in (-errno.ECANCELED, -errno.ENODATA):
            return False
        check(ret, f"removing {self.name}")
        return True

    @_counted("rados_write_op_operate")
    def remove(self) -> None:
        op = _rados().rados_create_write_op()
        try:
            _rados().rados_write_op_remove(op)
            ret = _rados().rados_write_op_operate(op, self._ioctx, self.oid, None, 0)
        finally:
            _rados().rados_release_write_op(op)
        if ret != -errno.ENOENT:
            check(ret, f"removing {self.name}")

    def notify(self, payload: bytes, timeout: float) -> tuple[int, int]:
        """Tell every watcher (this client's own watch included); (acks, timeouts)."""
        return decode_notify_reply(self._notify(payload, timeout))

    def probe(self, payload: bytes, timeout: float) -> tuple[list[int], list[int]]:
        """Tell every watcher, as :meth:`notify`; the client ids of those that answered and
        of those that did not (a watch whose client died lives on until the OSDs expire it)."""
        return notify_watchers(self._notify(payload, timeout))

    def ask(self, payload: bytes, timeout: float) -> list[bytes]:
        """Tell every watcher, as :meth:`notify`; the replies of those that answered in time."""
        return notify_payloads(self._notify(payload, timeout))

    @_counted("rados_notify2")
    def _notify(self, payload: bytes, timeout: float) -> bytes:
        reply = c_void_p()
        length = c_size_t()
        ret = _rados().rados_notify2(
            self._ioctx,
            self.oid,
            payload,
            len(payload),
            int(timeout * 1000),
            byref(reply),
            byref(length),
        )
        try:
            data = ctypes.string_at(reply, length.value) if reply.value else b""
        finally:
            if reply.value:
                _rados().rados_buffer_free(reply)
        if ret == -errno.ETIMEDOUT:  # some watcher did not answer in time: still told
            return data
        check(ret, f"notifying the watchers of {self.name}")
        return data

    @_counted("rados_watch2")
    def watch(
        self,
        on_notify: Callable[[int, bytes], bytes | None],
        on_error: Callable[[int], None],
    ) -> None:
        """Call ``on_notify(notifier_id, payload) -> reply`` on a librados thread for every
        notification (its reply acknowledges it; None leaves it unacknowledged, and the
        notifier counts this watch silent), ``on_error(errno)`` if the watch is lost."""

        def notified(_arg: object, notify_id: int, handle: int, notifier: int,
                     data: int | None, length: int) -> None:  # fmt: skip
            payload = ctypes.string_at(data, length) if data else b""
            try:
                reply = on_notify(notifier, payload)
            except Exception:  # never let an exception unwind into librados
                log.exception("%s: notification handler failed", self.name)
                reply = b""
            if reply is None:
                return
            _rados().rados_notify_ack(self._ioctx, self.oid, notify_id, handle, reply, len(reply))

        def failed(_arg: object, _cookie: int, err: int) -> None:
            try:
                on_error(-err)
            except Exception:
                log.exception("%s: watch error handler failed", self.name)

        callbacks = (WATCH_CALLBACK(notified), WATCH_ERROR_CALLBACK(failed))
        cookie = c_uint64()
        check(
            _rados().rados_watch2(self._ioctx, self.oid, byref(cookie), *callbacks, None),
            f"watching {self.name}",
        )
        self._callbacks = callbacks  # kept alive while librados may call them
        self._cookie = cookie.value

    @_counted("rados_blocklist_add")
    def blocklist(self, address: str) -> None:
        """Blocklist the client at ``address`` in the cluster (for the OSDs' default time):
        its watches end at once, a notification no longer waits for them, and nothing it
        still sends is accepted."""
        check(_rados().rados_blocklist_add(self._handle, address.encode(), 0),
              f"blocklisting {address}")  # fmt: skip

    @_counted("osd blocklist rm")
    def unblocklist(self, address: str) -> None:
        """Remove ``address`` (an old client of this process, shut down) from the blocklist."""
        mon_command(self._handle, {"prefix": "osd blocklist", "blocklistop": "rm",
                                   "addr": address})  # fmt: skip

    @_counted("rados_unwatch2")
    def unwatch(self) -> None:
        self._unwatch()

    def _unwatch(self) -> None:
        if self._cookie is not None:
            _rados().rados_unwatch2(self._ioctx, self._cookie)
            _rados().rados_watch_flush(self._handle)
            self._cookie = None

    def close(self, wait: float | None = None) -> None:
        """Stop watching and disconnect (blocking), once no call runs on the object any
        more; calls from now on are refused with ESHUTDOWN. Calls still running after
        ``wait`` seconds (by default the operation timeout and ``CLOSE_MARGIN``: each is
        bounded by it) are logged, and the last of them closes the client as it ends
        (:attr:`closed` says whether it has)."""
        with _close_lock:
            if self._closing:  # closed, or closing on another thread
                return
            self._closing = True
        wait = self.timeout + CLOSE_MARGIN if wait is None else wait
        if not self._calls.retire_when_idle(wait, self._shut_down):
            log.warning("%s: rados calls still running %g s after the close (%s): the "
                        "client closes when they end", self.name, wait,
                        self._calls.describe())  # fmt: skip

    @property
    def running(self) -> str:
        """The calls running on the object, by name (empty if none)."""
        return self._calls.describe()

    @property
    def closed(self) -> bool:
        """The client is shut down (not merely closing, waiting for a call)."""
        return not self._handle

    def _shut_down(self) -> None:
        with _close_lock:
            if self._ioctx:
                self._unwatch()
                lib().rados_ioctx_destroy(self._ioctx)
                self._ioctx = c_void_p()
            if self._handle:
                lib().rados_shutdown(self._handle)
                self._handle = c_void_p()


_close_lock = threading.Lock()
