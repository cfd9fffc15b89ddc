"""``iscsi://`` devices through libiscsi (the shared library, by ctypes).

Why not cython-iscsi (pyscsi's binding): its Task hands back only the status, neither the
sense data nor the residual, and a backup tool that cannot say why a command failed is no
use. libiscsi leaves the SCSI Response's sense segment in the task's data-in buffer, where
it is read raw (FILEMARK, ILI, INFORMATION, a copy target's appended sense all kept); should
it be missing, the decoded key, ASC/ASCQ and field pointer are rebuilt into fixed format.

The struct layouts are libiscsi's public ABI (``iscsi/scsi-lowlevel.h``, soname 7);
``hostcopy/tests/test_libiscsi_abi.py`` compiles a check of the offsets against the header.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket

from hostcopy.device import DEFAULT_TIMEOUT_S, Result, TransportError
from hostcopy.sense import fixed

XFER_NONE, XFER_READ, XFER_WRITE = 0, 1, 2
SESSION_NORMAL = 2
HEADER_DIGEST_NONE_CRC32C = 2
DEFAULT_INITIATOR = "iqn.2026-11.org.targetd:targetd-copy"
# libiscsi's own task statuses, beside the SCSI ones: the command never got an answer.
STATUS_CANCELLED, STATUS_ERROR, STATUS_TIMEOUT = 0x0F000000, 0x0F000001, 0x0F000002
# A logout is a courtesy (the target ends the session when the socket closes anyway): a
# hung target must not cost every other open session another full command timeout.
LOGOUT_TIMEOUT_S = 1


class _Sense(ctypes.Structure):
    # unsigned char error_type; enum key; int ascq (ASC << 8 | ASCQ); three 1-bit fields in
    # the byte at 12 (GCC packs the next char after them); bit_pointer; field_pointer.
    _fields_ = [
        ("error_type", ctypes.c_ubyte),
        ("key", ctypes.c_int),
        ("ascq", ctypes.c_int),
        ("bits", ctypes.c_ubyte),
        ("bit_pointer", ctypes.c_ubyte),
        ("field_pointer", ctypes.c_uint16),
    ]


class _Data(ctypes.Structure):
    _fields_ = [("size", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_ubyte))]


class _IoVector(ctypes.Structure):
    _fields_ = [
        ("iov", ctypes.c_void_p),
        ("niov", ctypes.c_int),
        ("nalloc", ctypes.c_int),
        ("offset", ctypes.c_size_t),
        ("consumed", ctypes.c_int),
    ]


class _Task(ctypes.Structure):
    _fields_ = [
        ("status", ctypes.c_int),
        ("cdb_size", ctypes.c_int),
        ("xfer_dir", ctypes.c_int),
        ("expxferlen", ctypes.c_int),
        ("cdb", ctypes.c_ubyte * 16),
        ("residual_status", ctypes.c_int),
        ("residual", ctypes.c_size_t),
        ("sense", _Sense),
        ("datain", _Data),
        ("mem", ctypes.c_void_p),
        ("ptr", ctypes.c_void_p),
        ("itt", ctypes.c_uint32),
        ("cmdsn", ctypes.c_uint32),
        ("lun", ctypes.c_uint32),
        ("iovector_in", _IoVector),
        ("iovector_out", _IoVector),
    ]


class _IscsiData(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("data", ctypes.c_char_p)]


_STR = 256


class _Url(ctypes.Structure):
    _fields_ = [
        ("portal", ctypes.c_char * _STR),
        ("target", ctypes.c_char * _STR),
        ("user", ctypes.c_char * _STR),
        ("passwd", ctypes.c_char * _STR),
        ("target_user", ctypes.c_char * _STR),
        ("target_passwd", ctypes.c_char * _STR),
        ("lun", ctypes.c_int),
        ("iscsi", ctypes.c_void_p),
        ("transport", ctypes.c_int),
    ]


def _library() -> ctypes.CDLL:
    path = ctypes.util.find_library("iscsi") or "libiscsi.so.7"
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise TransportError(f"libiscsi is not installed ({e}): install libiscsi7") from e
    ctx = ctypes.c_void_p
    sig = {
        "iscsi_create_context": (ctx, [ctypes.c_char_p]),
        "iscsi_destroy_context": (ctypes.c_int, [ctx]),
        "iscsi_get_error": (ctypes.c_char_p, [ctx]),
        "iscsi_parse_full_url": (ctypes.POINTER(_Url), [ctx, ctypes.c_char_p]),
        "iscsi_destroy_url": (None, [ctypes.POINTER(_Url)]),
        "iscsi_set_targetname": (ctypes.c_int, [ctx, ctypes.c_char_p]),
        "iscsi_set_session_type": (ctypes.c_int, [ctx, ctypes.c_int]),
        "iscsi_set_header_digest": (ctypes.c_int, [ctx, ctypes.c_int]),
        "iscsi_set_timeout": (ctypes.c_int, [ctx, ctypes.c_int]),
        "iscsi_set_noautoreconnect": (None, [ctx, ctypes.c_int]),
        "iscsi_full_connect_sync": (ctypes.c_int, [ctx, ctypes.c_char_p, ctypes.c_int]),
        "iscsi_logout_sync": (ctypes.c_int, [ctx]),
        "iscsi_disconnect": (ctypes.c_int, [ctx]),
        "scsi_create_task": (
            ctypes.POINTER(_Task),
            [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
        ),
        "scsi_free_scsi_task": (None, [ctypes.POINTER(_Task)]),
        "iscsi_scsi_command_sync": (
            ctypes.POINTER(_Task),
            [ctx, ctypes.c_int, ctypes.POINTER(_Task), ctypes.POINTER(_IscsiData)],
        ),
    }
    for fn, (restype, argtypes) in sig.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = restype, argtypes
    return lib


# Ctrl-C: Python's handler makes it an exception, after which the tool goes on to send
# COPY OPERATION ABORT (see IscsiDevice.execute). SIGTERM's default action ends the process.
_DEFERRED_SIGNALS = frozenset({signal.SIGINT})


def connect_failure(portal: str, lun: int, err: str) -> str:
    """Why ``iscsi_full_connect_sync`` failed, in words a user acts on. libiscsi says
    "login failed" for a portal nobody listens on (in terms of its reconnect logic) and for a
    LUN the target does not have (which it learns after the login, from TEST UNIT READY)."""
    if "LOGICAL_UNIT_NOT_SUPPORTED" in err:
        return f"logged in, but the target has no LUN {lun} (iscsi-ls -s lists its LUNs)"
    if "Target not found" in err:
        return f"the portal {portal} has no such target (iscsi-ls lists its targets): {err}"
    refused = _tcp_failure(portal)
    if refused is not None:
        return f"cannot connect to {portal}: {refused}"
    return f"login failed: {err}"


def _tcp_failure(portal: str) -> str | None:
    """Why a TCP connection to ``portal`` (HOST[:PORT], [V6]:PORT) fails, or None if it
    connects."""
    host, _, port = portal.rpartition(":")
    if not host or not port.isdigit() or host.endswith(":"):  # no port: HOST or a bare V6
        host, port = portal, "3260"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            return None
    except OSError as err:
        return err.strerror or str(err)


class IscsiDevice:
    """One iSCSI session to one LUN, logged in at construction."""

    def __init__(
        self, url: str, initiator: str | None = None, *, timeout: int = DEFAULT_TIMEOUT_S
    ) -> None:
        self.name = url
        self.timeout = timeout
        self._lib = lib = _library()
        name = initiator or os.environ.get("TARGETD_COPY_INITIATOR", DEFAULT_INITIATOR)
        self._ctx = lib.iscsi_create_context(name.encode())
        if not self._ctx:
            raise TransportError("libiscsi could not create a context")
        parsed = lib.iscsi_parse_full_url(self._ctx, url.encode())
        if not parsed:
            err = " ".join(self._error().split())  # libiscsi's text spans three lines
            lib.iscsi_destroy_context(self._ctx)
            raise TransportError(f"{url}: {err}")
        # The URL is allocated from the context: free it before the context (freeing it
        # after iscsi_destroy_context was a use-after-free that crashed the tool at times).
        u = parsed.contents
        self.lun = lun = u.lun
        portal = u.portal
        lib.iscsi_set_targetname(self._ctx, u.target)
        lib.iscsi_destroy_url(parsed)
        lib.iscsi_set_session_type(self._ctx, SESSION_NORMAL)
        lib.iscsi_set_header_digest(self._ctx, HEADER_DIGEST_NONE_CRC32C)
        # libiscsi's default on a lost connection is to log in again and again, for
        # ever, inside the sync call: a dead daemon would hang the tool. A backup's
        # copy does not survive its session anyway, so a lost connection is an error.
        lib.iscsi_set_noautoreconnect(self._ctx, 1)
        lib.iscsi_set_timeout(self._ctx, timeout)
        if lib.iscsi_full_connect_sync(self._ctx, portal, lun) != 0:
            err = self._error()
            lib.iscsi_destroy_context(self._ctx)
            raise TransportError(f"{url}: {connect_failure(portal.decode(), lun, err)}")
        self._timeout = timeout
        self._lost_connection = False

    def _lost(self, timeout: int, status: int | None) -> str:
        if status == STATUS_TIMEOUT:
            why = f"the target did not answer within {timeout} s (--command-timeout)"
        else:
            why = "lost the connection to the target"
        return f"{self.name}: {why}: {self._error()}"

    def _error(self) -> str:
        msg = self._lib.iscsi_get_error(self._ctx)
        return msg.decode(errors="replace") if msg else "unknown libiscsi error"

    def execute(
        self, cdb: bytes, *, data_out: bytes = b"", read: int = 0, timeout: int | None = None
    ) -> Result:
        lib = self._lib
        timeout = timeout or self.timeout
        if timeout != self._timeout:
            lib.iscsi_set_timeout(self._ctx, timeout)
            self._timeout = timeout
        if data_out:
            direction, length = XFER_WRITE, len(data_out)
        elif read:
            direction, length = XFER_READ, read
        else:
            direction, length = XFER_NONE, 0
        task = lib.scsi_create_task(len(cdb), cdb, direction, length)
        if not task:
            raise TransportError("libiscsi could not allocate a task")
        payload = None
        if data_out:
            payload = ctypes.pointer(_IscsiData(len(data_out), data_out))
        try:
            # libiscsi's sync loop gives up on a poll() that a signal interrupts ("Poll
            # failed") and returns with the task still queued in the context: freeing it
            # then, and sending the COPY OPERATION ABORT a Ctrl-C sends, corrupted the heap
            # when the late response arrived. A Ctrl-C waits for the command's
            # answer (every command answers at once; a hung target: --command-timeout).
            held = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)
            try:
                done = lib.iscsi_scsi_command_sync(self._ctx, self.lun, task, payload)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            t = task.contents
            if not done or t.status >= STATUS_CANCELLED:
                self._lost_connection = True
                raise TransportError(self._lost(timeout, t.status if done else None))
            data = b""
            if t.datain.size > 0 and t.datain.data:
                data = ctypes.string_at(t.datain.data, t.datain.size)
            sense = b""
            if t.status == 0x02 and len(data) >= 2 and int.from_bytes(data[:2], "big") > 0:
                # On CHECK CONDITION libiscsi leaves the SCSI Response's data segment in
                # datain: SenseLength (2 bytes) and the sense data as the target sent it.
                sense = data[2 : 2 + int.from_bytes(data[:2], "big")]
                data = b""
            elif t.status == 0x02:
                s = t.sense
                pointer = s.field_pointer if s.bits & 0x01 else None
                in_cdb = bool(s.bits & 0x02)
                sense = fixed(s.key, (s.ascq >> 8) & 0xFF, s.ascq & 0xFF, pointer, in_cdb)
            return Result(t.status, data, sense)
        finally:
            lib.scsi_free_scsi_task(task)

    def close(self) -> None:
        if self._ctx:
            if not self._lost_connection:
                self._lib.iscsi_set_timeout(self._ctx, min(self.timeout, LOGOUT_TIMEOUT_S))
                self._lib.iscsi_logout_sync(self._ctx)
            self._lib.iscsi_disconnect(self._ctx)
            self._lib.iscsi_destroy_context(self._ctx)
            self._ctx = None
