"""librados and librbd through ctypes: the C calls the RBD store needs, with their types.

Debian's Python binding (python3-rbd, Pacific) lacks ``compare_and_write``, copies every
buffer into and out of ``bytes``, and exists only for Debian's own interpreter. The C
libraries have all of it, read into and write from the caller's buffer, and load from any
Python, so the daemon uses them directly and needs only the ``librbd1`` package.

Every call here that can wait on the network (connect, open, close, diff_iterate, lock)
is made at startup or in a worker thread; the data path uses only the ``rbd_aio_*`` calls,
which queue the request and return.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    byref,
    c_char_p,
    c_int,
    c_size_t,
    c_ssize_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any

# rbd/librbd.h
EVENT_TYPE_EVENTFD = 2
RBD_LOCK_MODE_EXCLUSIVE = 0
RBD_FEATURE_FAST_DIFF = 1 << 4
RBD_FEATURE_OBJECT_MAP = 1 << 3
RBD_FEATURE_EXCLUSIVE_LOCK = 1 << 2
# librados.h: fadvise hints for rbd_aio_write2/read2.
LIBRADOS_OP_FLAG_FADVISE_DONTNEED = 0x20

# int (*cb)(uint64_t offset, size_t len, int exists, void *arg)
DIFF_CALLBACK = CFUNCTYPE(c_int, c_uint64, c_size_t, c_int, c_void_p)
# void (*rados_watchcb2_t)(void *arg, uint64_t notify_id, uint64_t handle,
#                          uint64_t notifier_id, void *data, size_t data_len)
WATCH_CALLBACK = CFUNCTYPE(None, c_void_p, c_uint64, c_uint64, c_uint64, c_void_p, c_size_t)
# void (*rbd_update_callback_t)(void *arg): the image's header changed (a resize...)
UPDATE_CALLBACK = CFUNCTYPE(None, c_void_p)
# void (*rados_watcherrcb_t)(void *pre, uint64_t cookie, int err)
WATCH_ERROR_CALLBACK = CFUNCTYPE(None, c_void_p, c_uint64, c_int)

_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    # librados
    "rados_create2": (c_int, [POINTER(c_void_p), c_char_p, c_char_p, c_uint64]),
    "rados_conf_read_file": (c_int, [c_void_p, c_char_p]),
    "rados_conf_set": (c_int, [c_void_p, c_char_p, c_char_p]),
    "rados_conf_get": (c_int, [c_void_p, c_char_p, c_char_p, c_size_t]),
    "rados_connect": (c_int, [c_void_p]),
    "rados_shutdown": (None, [c_void_p]),
    "rados_ioctx_create": (c_int, [c_void_p, c_char_p, POINTER(c_void_p)]),
    "rados_ioctx_set_namespace": (None, [c_void_p, c_char_p]),
    "rados_ioctx_destroy": (None, [c_void_p]),
    "rados_getaddrs": (c_int, [c_void_p, POINTER(c_char_p)]),
    "rados_write_full": (c_int, [c_void_p, c_char_p, c_char_p, c_size_t]),
    "rados_get_instance_id": (c_uint64, [c_void_p]),
    "rados_getxattr": (c_int, [c_void_p, c_char_p, c_char_p, c_char_p, c_size_t]),
    "rados_setxattr": (c_int, [c_void_p, c_char_p, c_char_p, c_char_p, c_size_t]),
    "rados_blocklist_add": (c_int, [c_void_p, c_char_p, c_uint32]),
    "rados_watch3": (
        c_int,
        [
            c_void_p,
            c_char_p,
            POINTER(c_uint64),
            WATCH_CALLBACK,
            WATCH_ERROR_CALLBACK,
            c_uint32,
            c_void_p,
        ],
    ),
    "rados_unwatch2": (c_int, [c_void_p, c_uint64]),
    "rados_notify2": (
        c_int,
        [c_void_p, c_char_p, c_char_p, c_int, c_uint64, POINTER(c_void_p), POINTER(c_size_t)],
    ),
    "rados_notify_ack": (c_int, [c_void_p, c_char_p, c_uint64, c_uint64, c_char_p, c_int]),
    "rados_buffer_free": (None, [c_void_p]),
    "rados_mon_command": (
        c_int,
        [
            c_void_p,
            POINTER(c_char_p),
            c_size_t,
            c_char_p,
            c_size_t,
            POINTER(c_void_p),
            POINTER(c_size_t),
            POINTER(c_void_p),
            POINTER(c_size_t),
        ],
    ),
    # librbd: images
    "rbd_create": (c_int, [c_void_p, c_char_p, c_uint64, POINTER(c_int)]),
    "rbd_open": (c_int, [c_void_p, c_char_p, POINTER(c_void_p), c_char_p]),
    "rbd_close": (c_int, [c_void_p]),
    "rbd_get_size": (c_int, [c_void_p, POINTER(c_uint64)]),
    "rbd_update_watch": (c_int, [c_void_p, POINTER(c_uint64), UPDATE_CALLBACK, c_void_p]),
    "rbd_update_unwatch": (c_int, [c_void_p, c_uint64]),
    "rbd_get_features": (c_int, [c_void_p, POINTER(c_uint64)]),
    "rbd_diff_iterate2": (
        c_int,
        [c_void_p, c_char_p, c_uint64, c_uint64, c_uint8, c_uint8, DIFF_CALLBACK, c_void_p],
    ),
    "rbd_snap_create": (c_int, [c_void_p, c_char_p]),
    "rbd_snap_remove": (c_int, [c_void_p, c_char_p]),
    "rbd_snap_list": (c_int, [c_void_p, c_void_p, POINTER(c_int)]),
    "rbd_snap_list_end": (None, [c_void_p]),
    "rbd_lock_acquire": (c_int, [c_void_p, c_int]),
    "rbd_lock_release": (c_int, [c_void_p]),
    "rbd_is_exclusive_lock_owner": (c_int, [c_void_p, POINTER(c_int)]),
    "rbd_lock_get_owners": (
        c_int,
        [c_void_p, POINTER(c_int), POINTER(c_char_p), POINTER(c_size_t)],
    ),
    "rbd_lock_get_owners_cleanup": (None, [POINTER(c_char_p), c_size_t]),
    "rbd_lock_break": (c_int, [c_void_p, c_int, c_char_p]),
    "rbd_get_id": (c_int, [c_void_p, c_char_p, c_size_t]),
    "rbd_watchers_list": (c_int, [c_void_p, c_void_p, POINTER(c_size_t)]),
    "rbd_watchers_list_cleanup": (None, [c_void_p, c_size_t]),
    # librbd: completions delivered through an eventfd
    "rbd_set_image_notification": (c_int, [c_void_p, c_int, c_int]),
    "rbd_poll_io_events": (c_int, [c_void_p, POINTER(c_void_p), c_int]),
    "rbd_aio_create_completion": (c_int, [c_void_p, c_void_p, POINTER(c_void_p)]),
    "rbd_aio_get_arg": (c_void_p, [c_void_p]),
    "rbd_aio_get_return_value": (c_ssize_t, [c_void_p]),
    "rbd_aio_release": (None, [c_void_p]),
    # librbd: asynchronous I/O
    "rbd_aio_read": (c_int, [c_void_p, c_uint64, c_size_t, c_void_p, c_void_p]),
    "rbd_aio_write": (c_int, [c_void_p, c_uint64, c_size_t, c_void_p, c_void_p]),
    "rbd_aio_readv": (c_int, [c_void_p, c_void_p, c_int, c_uint64, c_void_p]),
    "rbd_aio_writev": (c_int, [c_void_p, c_void_p, c_int, c_uint64, c_void_p]),
    "rbd_aio_discard": (c_int, [c_void_p, c_uint64, c_uint64, c_void_p]),
    "rbd_aio_write_zeroes": (c_int, [c_void_p, c_uint64, c_size_t, c_void_p, c_int, c_int]),
    "rbd_aio_flush": (c_int, [c_void_p, c_void_p]),
    "rbd_aio_compare_and_write": (
        c_int,
        [c_void_p, c_uint64, c_size_t, c_void_p, c_void_p, c_void_p, POINTER(c_uint64), c_int],
    ),
}


class SnapInfo(ctypes.Structure):
    """rbd_snap_info_t"""

    _fields_ = [("id", c_uint64), ("size", c_uint64), ("name", c_char_p)]


class RbdUnavailable(RuntimeError):
    """librados/librbd cannot be loaded (the librbd1 package is not installed)."""


class TypedFunctions:
    """C functions as typed attributes (``lib.rbd_open``), each found in the library
    ``library_of(name)`` gives and declared as ``signatures[name]`` (restype, argtypes)."""

    def __init__(
        self,
        signatures: dict[str, tuple[object, list[object]]],
        library_of: Callable[[str], ctypes.CDLL],
    ) -> None:
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(library_of(name), name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)

    def __getattr__(self, name: str) -> Any:  # the functions are set in __init__
        raise AttributeError(name)


class Lib(TypedFunctions):
    """The two shared libraries with typed functions as attributes (``lib.rbd_open``)."""

    def __init__(self) -> None:
        try:
            rados = ctypes.CDLL("librados.so.2", use_errno=True)
            rbd = ctypes.CDLL("librbd.so.1", use_errno=True)
        except OSError as exc:
            raise RbdUnavailable(f"librbd is not installed (Debian: librbd1): {exc}") from exc
        super().__init__(_SIGNATURES, lambda name: rados if name.startswith("rados_") else rbd)


@functools.cache
def lib() -> Lib:
    return Lib()


def check(ret: int, what: str) -> int:
    """``ret`` if it is not a negative errno, else an OSError naming ``what``."""
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def mon_command(handle: c_void_p, command: dict[str, object]) -> str:
    """One monitor command through the rados client ``handle`` (blocking); its status."""
    text = json.dumps(command).encode()
    argv = (ctypes.c_char_p * 1)(text)
    out, outs = c_void_p(), c_void_p()
    out_len, outs_len = ctypes.c_size_t(), ctypes.c_size_t()
    ret = lib().rados_mon_command(
        handle, argv, 1, b"", 0, byref(out), byref(out_len), byref(outs), byref(outs_len)
    )
    status = ctypes.string_at(outs, outs_len.value).decode() if outs else ""
    for buf in (out, outs):
        if buf:
            lib().rados_buffer_free(buf)
    check(ret, f"{command['prefix']}: {status}")
    return status


def client_address(handle: c_void_p) -> str:
    """The address of the rados client ``handle``, as the blocklist names it."""
    addrs = ctypes.c_char_p()
    check(lib().rados_getaddrs(handle, byref(addrs)), "rados_getaddrs")
    return (addrs.value or b"").decode()


__all__ = [
    "DIFF_CALLBACK",
    "EVENT_TYPE_EVENTFD",
    "RBD_FEATURE_FAST_DIFF",
    "RBD_LOCK_MODE_EXCLUSIVE",
    "UPDATE_CALLBACK",
    "WATCH_CALLBACK",
    "WATCH_ERROR_CALLBACK",
    "Lib",
    "RbdUnavailable",
    "SnapInfo",
    "check",
    "client_address",
    "lib",
    "mon_command",
]
