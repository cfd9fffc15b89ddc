"""What RECEIVE COPY RESULTS returns, and the third-party copy VPD page (8Fh): encoders
only, from an :class:`~xcopy.manager.Operation` and ``xcopy.limits``."""

from __future__ import annotations

import struct

from xcopy import limits
from xcopy.manager import Operation, State
from xcopy.params import LID1, LID4, SUPPORTED_DESCRIPTORS, THIS_LU

EXTENDED_COPY = 0x83
RECEIVE_COPY_RESULTS = 0x84
COPY_OPERATION_ABORT = 0x1C
COPY_STATUS, RECEIVE_DATA, OPERATING_PARAMETERS, FAILED_SEGMENT_DETAILS = 0x00, 0x01, 0x03, 0x04
COPY_STATUS_LID4, COPY_DATA_LID4 = 0x05, 0x06
SERVICE_ACTIONS = {
    EXTENDED_COPY: (LID1, LID4, COPY_OPERATION_ABORT),
    RECEIVE_COPY_RESULTS: (
        COPY_STATUS,
        RECEIVE_DATA,
        OPERATING_PARAMETERS,
        FAILED_SEGMENT_DETAILS,
        COPY_STATUS_LID4,
        COPY_DATA_LID4,
    ),
}

# LID1 COPY STATUS: 0 in progress, 1 completed, 2 completed with error (HDD bit 7: 0).
_LID1_STATUS = {State.RUNNING: 0x00, State.COMPLETED: 0x01, State.FAILED: 0x02, State.ABORTED: 0x02}
# LID4: 01h completed, 02h failed, 11h in progress in the foreground / 12h background
# (IMMED), 60h aborted by COPY OPERATION ABORT or a task management function.
_LID4_STATUS = {State.COMPLETED: 0x01, State.FAILED: 0x02, State.ABORTED: 0x60}
UNITS_BYTES, UNITS_KIB, UNITS_MIB = 0x00, 0x01, 0x02


def _transfer_count32(count: int) -> tuple[int, int]:
    for units, shift in ((UNITS_BYTES, 0), (UNITS_KIB, 10), (UNITS_MIB, 20)):
        if count >> shift <= 0xFFFFFFFF:
            return units, count >> shift
    return UNITS_MIB, 0xFFFFFFFF


def copy_status(op: Operation) -> bytes:
    """LID1 COPY STATUS (00h): 12 bytes."""
    units, count = _transfer_count32(op.bytes_done)
    return struct.pack(
        ">IBHBI", 8, _LID1_STATUS[op.state], min(op.segments_processed, 0xFFFF), units, count
    )


def failed_segment_details(op: Operation) -> bytes:
    """FAILED SEGMENT DETAILS (04h): nothing (AVAILABLE DATA 0) until the copy has ended;
    then 60 bytes and the sense data it ended with."""
    if not op.finished:
        return bytes(4)
    sense = op.sense or b""
    body = bytes(52) + bytes([_LID1_STATUS[op.state], 0]) + len(sense).to_bytes(2, "big") + sense
    return (len(body)).to_bytes(4, "big") + body


def receive_data(op: Operation) -> bytes:
    """RECEIVE DATA (01h) / RECEIVE COPY DATA (06h): no segment holds data (HELD DATA
    LIMIT is 0), so there is never any."""
    return bytes(4)


def copy_status_lid4(op: Operation) -> bytes:
    """RECEIVE COPY STATUS(LID4) (05h): 32 bytes and the sense data of the outcome."""
    if op.state is State.RUNNING:
        status = 0x12 if op.copy_list.immed else 0x11
        completion = 0x00
        sense = b""
    else:
        status = _LID4_STATUS[op.state]
        completion = 0x00 if op.state is State.COMPLETED else 0x02
        sense = op.sense or b""
        if op.state is State.COMPLETED and op.copy_list.g_sense:
            # G_SENSE: GOOD with sense data. NO SENSE, COMMAND-SPECIFIC INFORMATION = the
            # segments processed, so the good ending is reported like a failure would be.
            good = bytearray(18)
            good[0], good[7] = 0x70, 10
            good[8:12] = op.segments_processed.to_bytes(4, "big")
            sense = bytes(good)
    op.status_reported = (op.status_reported + 1) & 0xFFFF
    head = struct.pack(
        ">BBHIBBBBQH6x",
        LID4 if op.copy_list.service_action == LID4 else LID1,
        status,
        op.status_reported,
        0,  # ESTIMATED STATUS UPDATE DELAY (ms): ask again whenever
        completion,
        len(sense),
        len(sense),
        UNITS_BYTES,
        op.bytes_done,
        min(op.segments_processed, 0xFFFF),
    )
    body = head + sense
    return len(body).to_bytes(4, "big") + body


def operating_parameters() -> bytes:
    """OPERATING PARAMETERS (03h)."""
    codes = bytes(SUPPORTED_DESCRIPTORS)
    body = struct.pack(
        ">B3xHHIIIII2xHBBBB3xB",
        0x01,  # SNLID: LIST ID USAGE 11b is served
        limits.MAX_CSCD_DESCRIPTORS,
        limits.MAX_SEGMENT_DESCRIPTORS,
        limits.MAX_DESCRIPTOR_LIST_LENGTH,
        limits.MAX_SEGMENT_LENGTH,
        limits.MAX_INLINE_DATA_LENGTH,
        limits.HELD_DATA_LIMIT,
        limits.MAX_STREAM_TRANSFER,
        limits.MAX_CONCURRENT_COPIES,
        min(limits.MAX_CONCURRENT_COPIES, 0xFF),
        limits.DATA_SEGMENT_GRANULARITY,
        limits.INLINE_DATA_GRANULARITY,
        limits.HELD_DATA_GRANULARITY,
        len(codes),
    )
    body += codes
    return len(body).to_bytes(4, "big") + body


def _tpc_descriptor(kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)  # each descriptor is a multiple of four bytes
    return kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def third_party_copy_page(device_type: int) -> bytes:
    """VPD page 8Fh: supported commands, parameter data, supported descriptors, supported
    CSCD IDs, general copy operations, stream copy operations and held data."""
    commands = b"".join(
        bytes([opcode, len(actions), *actions]) for opcode, actions in SERVICE_ACTIONS.items()
    )
    descs = [
        _tpc_descriptor(0x0001, bytes([len(commands)]) + commands),
        _tpc_descriptor(
            0x0004,
            bytes(4)
            + struct.pack(
                ">HHII",
                limits.MAX_CSCD_DESCRIPTORS,
                limits.MAX_SEGMENT_DESCRIPTORS,
                limits.MAX_DESCRIPTOR_LIST_LENGTH,
                limits.MAX_INLINE_DATA_LENGTH,
            )
            + bytes(12),
        ),
        _tpc_descriptor(0x0008, bytes([len(SUPPORTED_DESCRIPTORS)]) + bytes(SUPPORTED_DESCRIPTORS)),
        _tpc_descriptor(0x000C, (2).to_bytes(2, "big") + THIS_LU.to_bytes(2, "big")),
        _tpc_descriptor(
            0x8001,
            struct.pack(
                ">IIIBB",
                limits.MAX_CONCURRENT_COPIES,
                limits.MAX_CONCURRENT_COPIES,
                limits.MAX_SEGMENT_LENGTH,
                limits.DATA_SEGMENT_GRANULARITY,
                limits.INLINE_DATA_GRANULARITY,
            )
            + bytes(18),
        ),
        _tpc_descriptor(0x9101, bytes(2) + limits.MAX_STREAM_TRANSFER.to_bytes(4, "big")),
        _tpc_descriptor(
            0xC001,
            bytes(2)
            + limits.HELD_DATA_LIMIT.to_bytes(4, "big")
            + bytes([limits.HELD_DATA_GRANULARITY])
            + bytes(23),
        ),
    ]
    body = b"".join(descs)
    return bytes([device_type & 0x1F, 0x8F]) + len(body).to_bytes(2, "big") + body
