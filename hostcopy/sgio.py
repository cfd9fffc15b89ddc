"""``/dev/sgN`` and ``/dev/sdX`` through the SG_IO ioctl, as sg3_utils sends commands."""

from __future__ import annotations

import ctypes
import fcntl
import os

from hostcopy.device import DEFAULT_TIMEOUT_S, Result, TransportError

SG_IO = 0x2285
SG_SET_RESERVED_SIZE, SG_GET_RESERVED_SIZE = 0x2275, 0x2272
SG_DXFER_NONE, SG_DXFER_TO_DEV, SG_DXFER_FROM_DEV = -1, -2, -3
SENSE_MAX = 252
# host_status / driver_status values that mean the command never reached the target.
_DRIVER_SENSE = 0x08


class _SgIoHdr(ctypes.Structure):
    # struct sg_io_hdr of <scsi/sg.h>; ctypes gives it the C layout of this machine.
    _fields_ = [
        ("interface_id", ctypes.c_int),
        ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte),
        ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort),
        ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p),
        ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte),
        ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte),
        ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort),
        ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint),
        ("info", ctypes.c_uint),
    ]


class SgDevice:
    def __init__(self, path: str, *, timeout: int = DEFAULT_TIMEOUT_S) -> None:
        self.name = path
        self.timeout = timeout
        self._buffer: ctypes.Array[ctypes.c_char] | None = None
        self._reserved = 0
        try:
            # O_NONBLOCK as sg3_utils: a tape node must not wait for the medium to open.
            self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        except OSError as e:
            raise TransportError(f"{path}: {e.strerror}") from e

    def _reserve(self, size: int) -> None:
        """Grow the sg driver's reserved buffer to ``size``, as sg_dd does: a transfer
        larger than it gets pages allocated and freed for every command (the default is
        32 KiB; a 1 MiB record read then costs several times the copy itself). A block
        device node (/dev/sdX) has no such buffer: the ioctl fails there and is skipped."""
        if size <= self._reserved:
            return
        value = ctypes.c_int(size)
        try:
            fcntl.ioctl(self._fd, SG_SET_RESERVED_SIZE, value)
            fcntl.ioctl(self._fd, SG_GET_RESERVED_SIZE, value)
        except OSError:
            self._reserved = 1 << 62  # not an sg node: never ask again
            return
        self._reserved = max(value.value, self._reserved)

    def _read_buffer(self, size: int) -> ctypes.Array[ctypes.c_char]:
        # One buffer per device, kept: a verify reads thousands of records, and a fresh
        # zeroed megabyte per command costs more than the copy out of it.
        if self._buffer is None or len(self._buffer) < size:
            self._buffer = ctypes.create_string_buffer(size)
        return self._buffer

    def execute(
        self, cdb: bytes, *, data_out: bytes = b"", read: int = 0, timeout: int | None = None
    ) -> Result:
        self._reserve(max(len(data_out), read))
        cdb_buf = ctypes.create_string_buffer(bytes(cdb), len(cdb))
        sense_buf = ctypes.create_string_buffer(SENSE_MAX)
        hdr = _SgIoHdr()
        hdr.interface_id = ord("S")
        hdr.cmd_len = len(cdb)
        hdr.cmdp = ctypes.addressof(cdb_buf)
        hdr.mx_sb_len = SENSE_MAX
        hdr.sbp = ctypes.addressof(sense_buf)
        hdr.timeout = (timeout or self.timeout) * 1000
        if data_out:
            buf = ctypes.create_string_buffer(bytes(data_out), len(data_out))
            hdr.dxfer_direction, hdr.dxfer_len = SG_DXFER_TO_DEV, len(data_out)
            hdr.dxferp = ctypes.addressof(buf)
        elif read:
            buf = self._read_buffer(read)
            hdr.dxfer_direction, hdr.dxfer_len = SG_DXFER_FROM_DEV, read
            hdr.dxferp = ctypes.addressof(buf)
        else:
            buf = None
            hdr.dxfer_direction = SG_DXFER_NONE
        try:
            fcntl.ioctl(self._fd, SG_IO, hdr)
        except OSError as e:
            raise TransportError(f"{self.name}: SG_IO: {e.strerror}") from e
        if hdr.host_status:
            raise TransportError(f"{self.name}: transport failure (host status {hdr.host_status})")
        data = b""
        if read and buf is not None:
            data = ctypes.string_at(buf, max(0, read - hdr.resid))
        sense = sense_buf.raw[: hdr.sb_len_wr]
        status = hdr.status
        if not status and hdr.driver_status & _DRIVER_SENSE and sense:
            status = 0x02
        return Result(status, data, sense)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
