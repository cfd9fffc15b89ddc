"""iSCSI PDU layout: the 48-byte Basic Header Segment, its opcodes, and response builders.

Fields are read and written at their RFC 7143 offsets with ``struct``; the hot path
(SCSI Command, Data-Out, Data-In, SCSI Response) touches only the words it needs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

BHS_LEN = 48
RESERVED_TAG = 0xFFFFFFFF

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


class Op(IntEnum):
    # initiator to target
    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    # target to initiator
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


INITIATOR_OPCODES = frozenset(
    {
        Op.NOP_OUT,
        Op.SCSI_COMMAND,
        Op.TASK_MGMT_REQUEST,
        Op.LOGIN_REQUEST,
        Op.TEXT_REQUEST,
        Op.DATA_OUT,
        Op.LOGOUT_REQUEST,
        Op.SNACK_REQUEST,
    }
)


class RejectReason(IntEnum):
    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    OUT_OF_RESOURCES = 0x0A
    NEGOTIATION_RESET = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


# SCSI Command flags (byte 1)
FLAG_FINAL = 0x80
FLAG_READ = 0x40
FLAG_WRITE = 0x20
ATTR_MASK = 0x07
# Data-In flags (byte 1)
DATAIN_ACK = 0x40
FLAG_OVERFLOW = 0x04
FLAG_UNDERFLOW = 0x02
DATAIN_STATUS = 0x01


@dataclass(slots=True)
class Pdu:
    """A received PDU: its BHS, AHS and data segment (without padding or digests)."""

    bhs: bytes
    ahs: bytes = b""
    data: bytes | memoryview = b""

    @property
    def opcode(self) -> int:
        return self.bhs[0] & 0x3F

    @property
    def immediate(self) -> bool:
        return bool(self.bhs[0] & 0x40)

    @property
    def flags(self) -> int:
        return self.bhs[1]

    @property
    def final(self) -> bool:
        return bool(self.bhs[1] & 0x80)

    @property
    def data_length(self) -> int:
        return int.from_bytes(self.bhs[5:8], "big")

    @property
    def lun(self) -> bytes:
        return self.bhs[8:16]

    @property
    def itt(self) -> int:
        return _U32.unpack_from(self.bhs, 16)[0]

    def u32(self, offset: int) -> int:
        return _U32.unpack_from(self.bhs, offset)[0]

    def u16(self, offset: int) -> int:
        return _U16.unpack_from(self.bhs, offset)[0]

    # Names for the words most PDUs share, at their RFC 7143 offsets.
    @property
    def ttt(self) -> int:
        return self.u32(20)

    @property
    def cmdsn(self) -> int:
        return self.u32(24)

    @property
    def expstatsn(self) -> int:
        return self.u32(28)


def data_segment_length(bhs: bytes | bytearray | memoryview) -> int:
    return (bhs[5] << 16) | (bhs[6] << 8) | bhs[7]


def padded(length: int) -> int:
    return (length + 3) & ~3


def new_header(
    opcode: int,
    flags: int = 0x80,
    *,
    itt: int = RESERVED_TAG,
    lun: bytes = bytes(8),
    data_length: int = 0,
) -> bytearray:
    """A zeroed BHS with opcode, flags, LUN, ITT and DataSegmentLength filled in."""
    hdr = bytearray(BHS_LEN)
    hdr[0] = opcode
    hdr[1] = flags
    hdr[5:8] = data_length.to_bytes(3, "big")
    hdr[8:16] = lun
    _U32.pack_into(hdr, 16, itt)
    return hdr


def put_u32(hdr: bytearray, offset: int, value: int) -> None:
    _U32.pack_into(hdr, offset, value & 0xFFFFFFFF)


def put_u16(hdr: bytearray, offset: int, value: int) -> None:
    _U16.pack_into(hdr, offset, value & 0xFFFF)


def set_data_length(hdr: bytearray, length: int) -> None:
    hdr[5:8] = length.to_bytes(3, "big")


def serial_lt(a: int, b: int) -> bool:
    """RFC 1982 serial-number comparison (32 bits) as iSCSI uses for CmdSN/StatSN."""
    return a != b and ((a < b and b - a < 0x80000000) or (a > b and a - b > 0x80000000))


def serial_le(a: int, b: int) -> bool:
    return a == b or serial_lt(a, b)


class LoginStatus(IntEnum):
    """Login Response Status-Class (high byte) and Status-Detail (low byte), RFC 7143 11.13.5."""

    SUCCESS = 0x0000
    TARGET_MOVED_TEMPORARILY = 0x0101
    TARGET_MOVED_PERMANENTLY = 0x0102
    INITIATOR_ERROR = 0x0200
    AUTHENTICATION_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302

    @property
    def status_class(self) -> int:
        return self.value >> 8

    @property
    def status_detail(self) -> int:
        return self.value & 0xFF
