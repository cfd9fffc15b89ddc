"""Sense data: one table from a symbolic reason to sense key, ASC and ASCQ.

Handlers raise :class:`CheckCondition` with a :class:`Reason`; the dispatcher turns it
into CHECK CONDITION with fixed-format (or descriptor-format) sense. Keeping the codes in
one table means a reason is spelled once and every handler answers it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum


class SenseKey(IntEnum):
    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE


_K = SenseKey

# Vendor-specific ASC 80h (SPC-4 reserves ASC 80h..FFh for vendors). Every ASCQ under it is
# handed out here and nowhere else, so two conditions never meet on one value; a value once
# shipped never changes (initiators' scripts and targetd-copy match on it). One ASCQ has one
# meaning; the sense key says where it arose: ILLEGAL REQUEST for a pair command, COPY
# ABORTED for an EXTENDED COPY. docs/pairs.md ("Vendor-specific sense codes") lists them all.
VENDOR_ASC = 0x80


class VendorAscq(IntEnum):
    # Volume pairs (PAIR OUT, and the copies that read a pair)
    PAIR_NOT_FOUND = 0x01
    PAIR_WRONG_STATE = 0x02  # a copy's source: the target volume of a pair that is not split
    PAIR_SIZE_MISMATCH = 0x03
    PAIR_LUN_ALREADY_PAIRED = 0x04
    PAIR_NAME_IN_USE = 0x05
    PAIR_SAME_LUN = 0x06
    PAIR_LUN_READ_ONLY = 0x07
    PAIR_ALREADY_IN_GROUP = 0x08
    PAIR_TOO_MANY_SECONDARIES = 0x09  # 3 per primary
    PAIR_LUN_AMBIGUOUS = 0x0A  # a primary of several pairs
    # A backup of a pair volume: the split image went away while the copy read it.
    SPLIT_IMAGE_LOST = 0x10
    # Self-describing backups: no digest open for the stream; no end label where one belongs.
    NO_DIGEST = 0x20
    NO_END_LABEL = 0x21


def _vendor(key: SenseKey, ascq: VendorAscq) -> tuple[SenseKey, int, int]:
    return (key, VENDOR_ASC, int(ascq))


_V = VendorAscq


class Reason(Enum):
    """Why a command failed, as (sense key, ASC, ASCQ)."""

    NO_SENSE = (_K.NO_SENSE, 0x00, 0x00)
    # ILLEGAL REQUEST
    INVALID_OPCODE = (_K.ILLEGAL_REQUEST, 0x20, 0x00)
    LBA_OUT_OF_RANGE = (_K.ILLEGAL_REQUEST, 0x21, 0x00)
    INVALID_FIELD_IN_CDB = (_K.ILLEGAL_REQUEST, 0x24, 0x00)
    # The command's expected data transfer length does not fit its CDB (iSCSI EDTL).
    INVALID_FIELD_IN_INFORMATION_UNIT = (_K.ILLEGAL_REQUEST, 0x0E, 0x03)
    LUN_NOT_SUPPORTED = (_K.ILLEGAL_REQUEST, 0x25, 0x00)
    INVALID_FIELD_IN_PARAMETER_LIST = (_K.ILLEGAL_REQUEST, 0x26, 0x00)
    PARAMETER_NOT_SUPPORTED = (_K.ILLEGAL_REQUEST, 0x26, 0x01)
    PARAMETER_VALUE_INVALID = (_K.ILLEGAL_REQUEST, 0x26, 0x02)
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION = (_K.ILLEGAL_REQUEST, 0x26, 0x04)
    TOO_MANY_TARGET_DESCRIPTORS = (_K.ILLEGAL_REQUEST, 0x26, 0x06)
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE = (_K.ILLEGAL_REQUEST, 0x26, 0x07)
    TOO_MANY_SEGMENT_DESCRIPTORS = (_K.ILLEGAL_REQUEST, 0x26, 0x08)
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE = (_K.ILLEGAL_REQUEST, 0x26, 0x09)
    INLINE_DATA_LENGTH_EXCEEDED = (_K.ILLEGAL_REQUEST, 0x26, 0x0B)
    COPY_SEGMENT_GRANULARITY_VIOLATION = (_K.ILLEGAL_REQUEST, 0x26, 0x0D)
    PARAMETER_LIST_LENGTH_ERROR = (_K.ILLEGAL_REQUEST, 0x1A, 0x00)
    SAVING_PARAMETERS_NOT_SUPPORTED = (_K.ILLEGAL_REQUEST, 0x39, 0x00)
    INSUFFICIENT_REGISTRATION_RESOURCES = (_K.ILLEGAL_REQUEST, 0x55, 0x04)
    OPERATION_IN_PROGRESS = (_K.ILLEGAL_REQUEST, 0x00, 0x16)
    INVALID_COMMAND_OPERATION_CODE = INVALID_OPCODE
    MEDIUM_REMOVAL_PREVENTED = (_K.ILLEGAL_REQUEST, 0x53, 0x02)
    # Media changer (SMC-3): a MOVE MEDIUM that cannot be done
    INVALID_ELEMENT_ADDRESS = (_K.ILLEGAL_REQUEST, 0x21, 0x01)
    MEDIUM_DESTINATION_ELEMENT_FULL = (_K.ILLEGAL_REQUEST, 0x3B, 0x0D)
    MEDIUM_SOURCE_ELEMENT_EMPTY = (_K.ILLEGAL_REQUEST, 0x3B, 0x0E)
    # UNIT ATTENTION
    POWER_ON_RESET = (_K.UNIT_ATTENTION, 0x29, 0x00)
    BUS_DEVICE_RESET = (_K.UNIT_ATTENTION, 0x29, 0x03)
    I_T_NEXUS_LOSS = (_K.UNIT_ATTENTION, 0x29, 0x07)
    MODE_PARAMETERS_CHANGED = (_K.UNIT_ATTENTION, 0x2A, 0x01)
    RESERVATIONS_PREEMPTED = (_K.UNIT_ATTENTION, 0x2A, 0x03)
    RESERVATIONS_RELEASED = (_K.UNIT_ATTENTION, 0x2A, 0x04)
    REGISTRATIONS_PREEMPTED = (_K.UNIT_ATTENTION, 0x2A, 0x05)
    CAPACITY_DATA_CHANGED = (_K.UNIT_ATTENTION, 0x2A, 0x09)
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = (_K.UNIT_ATTENTION, 0x2F, 0x00)
    REPORTED_LUNS_DATA_CHANGED = (_K.UNIT_ATTENTION, 0x3F, 0x0E)
    INQUIRY_DATA_CHANGED = (_K.UNIT_ATTENTION, 0x3F, 0x03)
    MEDIUM_MAY_HAVE_CHANGED = (_K.UNIT_ATTENTION, 0x28, 0x00)
    ASYMMETRIC_ACCESS_STATE_CHANGED = (_K.UNIT_ATTENTION, 0x2A, 0x06)
    IMPORT_OR_EXPORT_ELEMENT_ACCESSED = (_K.UNIT_ATTENTION, 0x28, 0x01)
    # NOT READY
    NOT_READY_CAUSE_NOT_REPORTABLE = (_K.NOT_READY, 0x04, 0x00)
    NOT_READY_INITIALIZING_REQUIRED = (_K.NOT_READY, 0x04, 0x02)
    MEDIUM_NOT_PRESENT = (_K.NOT_READY, 0x3A, 0x00)
    # The target port's ALUA group does not serve the command (scsi/alua.py).
    LU_NOT_ACCESSIBLE_TRANSITIONING = (_K.NOT_READY, 0x04, 0x0A)
    LU_NOT_ACCESSIBLE_STANDBY = (_K.NOT_READY, 0x04, 0x0B)
    LU_NOT_ACCESSIBLE_UNAVAILABLE = (_K.NOT_READY, 0x04, 0x0C)
    # DATA PROTECT
    WRITE_PROTECTED = (_K.DATA_PROTECT, 0x27, 0x00)
    SOFTWARE_WRITE_PROTECTED = (_K.DATA_PROTECT, 0x27, 0x02)  # control mode page SWP
    # A thin-provisioned LU found no room for a write (SBC-3 4.7.3.6: the file system under
    # the LUN file is full).
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT = (_K.DATA_PROTECT, 0x27, 0x07)
    # MEDIUM / HARDWARE
    UNRECOVERED_READ_ERROR = (_K.MEDIUM_ERROR, 0x11, 0x00)
    WRITE_ERROR = (_K.MEDIUM_ERROR, 0x0C, 0x00)
    INTERNAL_TARGET_FAILURE = (_K.HARDWARE_ERROR, 0x44, 0x00)
    LOGICAL_UNIT_COMMUNICATION_FAILURE = (_K.HARDWARE_ERROR, 0x08, 0x00)
    LOGICAL_UNIT_COMMUNICATION_TIMEOUT = (_K.HARDWARE_ERROR, 0x08, 0x01)
    MEDIUM_LOAD_OR_EJECT_FAILED = (_K.HARDWARE_ERROR, 0x53, 0x00)  # a cartridge's image
    # Sequential-access conditions (SSC): position events reported with NO SENSE, and
    # the sense keys tape reads and writes end with at end of data and end of medium.
    FILEMARK_DETECTED = (_K.NO_SENSE, 0x00, 0x01)
    END_OF_PARTITION_MEDIUM_DETECTED = (_K.NO_SENSE, 0x00, 0x02)
    BEGINNING_OF_PARTITION_MEDIUM_DETECTED = (_K.NO_SENSE, 0x00, 0x04)
    END_OF_DATA_DETECTED = (_K.BLANK_CHECK, 0x00, 0x05)
    VOLUME_OVERFLOW = (_K.VOLUME_OVERFLOW, 0x00, 0x02)
    # MISCOMPARE
    MISCOMPARE_DURING_VERIFY = (_K.MISCOMPARE, 0x1D, 0x00)
    # ABORTED COMMAND
    COMMAND_ABORTED = (_K.ABORTED_COMMAND, 0x00, 0x00)
    INITIATOR_RESPONSE_TIMEOUT = (_K.ABORTED_COMMAND, 0x4B, 0x06)
    DATA_PHASE_ERROR = (_K.ABORTED_COMMAND, 0x4B, 0x00)
    INVALID_TARGET_PORT_TRANSFER_TAG = (_K.ABORTED_COMMAND, 0x4B, 0x01)
    PROTOCOL_SERVICE_CRC_ERROR = (_K.ABORTED_COMMAND, 0x47, 0x05)
    # Volume pairs: PAIR OUT refusals (vendor ASC 80h, VendorAscq; docs/pairs.md)
    PAIR_NOT_FOUND = _vendor(_K.ILLEGAL_REQUEST, _V.PAIR_NOT_FOUND)
    PAIR_WRONG_STATE = _vendor(_K.ILLEGAL_REQUEST, _V.PAIR_WRONG_STATE)
    PAIR_SIZE_MISMATCH = _vendor(_K.ILLEGAL_REQUEST, _V.PAIR_SIZE_MISMATCH)
    PAIR_LUN_ALREADY_PAIRED = _vendor(_K.ILLEGAL_REQUEST, _V.PAIR_LUN_ALREADY_PAIRED)
    PAIR_NAME_IN_USE = _vendor(_K.ILLEGAL_REQUEST, _V.PAIR_NAME_IN_USE)
    PAIR_SAME_LUN = _vendor(_K.ILLEGAL_REQUEST, _V.PAIR_SAME_LUN)
    PAIR_LUN_READ_ONLY = _vendor(_K.ILLEGAL_REQUEST, _V.PAIR_LUN_READ_ONLY)
    PAIR_ALREADY_IN_GROUP = _vendor(_K.ILLEGAL_REQUEST, _V.PAIR_ALREADY_IN_GROUP)
    PAIR_TOO_MANY_SECONDARIES = _vendor(_K.ILLEGAL_REQUEST, _V.PAIR_TOO_MANY_SECONDARIES)
    PAIR_LUN_AMBIGUOUS = _vendor(_K.ILLEGAL_REQUEST, _V.PAIR_LUN_AMBIGUOUS)
    # COPY ABORTED
    COPY_TARGET_DEVICE_NOT_REACHABLE = (_K.COPY_ABORTED, 0x0D, 0x02)
    COPY_ABORTED_UNREACHABLE = (_K.COPY_ABORTED, 0x08, 0x00)
    COPY_ABORTED_NO_ADDITIONAL_SENSE = (_K.COPY_ABORTED, 0x00, 0x00)
    THIRD_PARTY_DEVICE_FAILURE = (_K.COPY_ABORTED, 0x0D, 0x01)
    INCORRECT_COPY_TARGET_DEVICE_TYPE = (_K.COPY_ABORTED, 0x0D, 0x03)
    COPY_TARGET_DEVICE_DATA_UNDERRUN = (_K.COPY_ABORTED, 0x0D, 0x04)
    COPY_TARGET_DEVICE_DATA_OVERRUN = (_K.COPY_ABORTED, 0x0D, 0x05)
    UNREACHABLE_COPY_TARGET = (_K.COPY_ABORTED, 0x08, 0x04)
    COPY_ABORTED_UNEXPECTED_INEXACT_SEGMENT = (_K.COPY_ABORTED, 0x26, 0x0A)
    # A backup of a pair volume (vendor ASC 80h under COPY ABORTED; docs/xcopy.md): the
    # source is the target volume of a pair that is not split, or the split image is gone
    # (the pair was resynchronized, suspended or deleted while the copy read it).
    COPY_SOURCE_PAIR_NOT_SPLIT = _vendor(_K.COPY_ABORTED, _V.PAIR_WRONG_STATE)
    COPY_SPLIT_IMAGE_LOST = _vendor(_K.COPY_ABORTED, _V.SPLIT_IMAGE_LOST)
    # Self-describing backups (docs/xcopy.md): the data read back does not hash to what its
    # end label says; no digest is open for the stream (no START DIGEST, or a copy that fed
    # it failed); where the end label should be, there is none (a partial backup).
    COPY_LABEL_MISCOMPARE = (_K.COPY_ABORTED, 0x1D, 0x00)
    COPY_NO_DIGEST = _vendor(_K.COPY_ABORTED, _V.NO_DIGEST)
    COPY_NO_END_LABEL = _vendor(_K.COPY_ABORTED, _V.NO_END_LABEL)
    # The daemon stopped (or was killed) while the copy ran: reported after the restart.
    COPY_ABORTED_BY_RESTART = (_K.COPY_ABORTED, 0x29, 0x00)
    # EXTENDED COPY parameter lists and copy resources (ILLEGAL REQUEST, xcopy/)
    UNEXPECTED_INEXACT_SEGMENT = (_K.ILLEGAL_REQUEST, 0x26, 0x0A)
    INVALID_OPERATION_FOR_COPY_SOURCE_OR_DESTINATION = (_K.ILLEGAL_REQUEST, 0x26, 0x0C)
    INSUFFICIENT_RESOURCES = (_K.ILLEGAL_REQUEST, 0x55, 0x03)

    @property
    def key(self) -> SenseKey:
        return self.value[0]

    @property
    def asc(self) -> int:
        return self.value[1]

    @property
    def ascq(self) -> int:
        return self.value[2]


@dataclass(slots=True)
class FieldPointer:
    """Sense-key-specific field pointer: which byte (and bit) of the CDB or parameter list."""

    byte: int
    bit: int | None = None
    in_cdb: bool = True

    def encode(self) -> bytes:
        b0 = 0x80 | (0x40 if self.in_cdb else 0)
        if self.bit is not None:
            b0 |= 0x08 | (self.bit & 0x7)
        return bytes([b0]) + (self.byte & 0xFFFF).to_bytes(2, "big")


class CheckCondition(Exception):  # named for the SCSI status it becomes
    """Raised by a handler: the command ends with CHECK CONDITION and this sense."""

    def __init__(
        self,
        reason: Reason,
        field: FieldPointer | None = None,
        information: int | None = None,
        *,
        filemark: bool = False,
        eom: bool = False,
        ili: bool = False,
        sks: bytes | None = None,
        message: str = "",
    ) -> None:
        super().__init__(message or reason.name)
        self.reason = reason
        self.field = field
        self.information = information
        self.filemark = filemark
        self.eom = eom
        self.ili = ili
        self.sks = sks

    def sense(self, descriptor_format: bool = False) -> bytes:
        return build_sense(
            self.reason,
            field=self.field,
            information=self.information,
            filemark=self.filemark,
            eom=self.eom,
            ili=self.ili,
            sks=self.sks,
            descriptor_format=descriptor_format,
        )


def build_sense(
    reason: Reason,
    *,
    field: FieldPointer | None = None,
    information: int | None = None,
    filemark: bool = False,
    eom: bool = False,
    ili: bool = False,
    sks: bytes | None = None,
    descriptor_format: bool = False,
) -> bytes:
    """Current-error sense data in fixed (70h) or descriptor (72h) format."""
    key, asc, ascq = reason.value
    sks_bytes = sks if sks is not None else (field.encode() if field is not None else None)
    if descriptor_format:
        descs = b""
        if information is not None:
            descs += bytes([0x00, 0x0A, 0x80, 0x00]) + information.to_bytes(8, "big")
        if sks_bytes is not None:
            descs += bytes([0x02, 0x06, 0x00, 0x00]) + sks_bytes + b"\0"
        if filemark or eom or ili:
            descs += bytes([0x04, 0x02, 0x00, (filemark << 7) | (eom << 6) | (ili << 5)])
        return bytes([0x72, key, asc, ascq, 0, 0, 0, len(descs)]) + descs
    sense = bytearray(18)
    sense[0] = 0x70
    sense[2] = key | (filemark << 7) | (eom << 6) | (ili << 5)
    if information is not None:
        sense[0] |= 0x80
        sense[3:7] = (information & 0xFFFFFFFF).to_bytes(4, "big")
    sense[7] = 10
    sense[12] = asc
    sense[13] = ascq
    if sks_bytes is not None:
        sense[15:18] = sks_bytes
    return bytes(sense)


def parse_sense(sense: bytes) -> tuple[int, int, int]:
    """(key, ASC, ASCQ) of fixed- or descriptor-format sense, for tests and logs."""
    if sense[0] & 0x7F in (0x72, 0x73):
        return sense[1] & 0xF, sense[2], sense[3]
    return sense[2] & 0xF, sense[12], sense[13]
