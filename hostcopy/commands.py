"""The CDBs the tool sends and the decoders of what comes back (SPC, SBC, SSC, and the
vendor pair commands of docs/pairs.md). Pure: bytes in, bytes or values out."""

from __future__ import annotations

import struct
from dataclasses import dataclass

INQUIRY, READ_CAPACITY_16 = 0x12, 0x9E
EXTENDED_COPY, RECEIVE_COPY_RESULTS = 0x83, 0x84
LID4, OPERATING_PARAMETERS, COPY_STATUS_LID4 = 0x01, 0x03, 0x05
REWIND, READ_6, SPACE_6, TEST_UNIT_READY = 0x01, 0x08, 0x11, 0x00
READ_16 = 0x88
PAIR_OUT, PAIR_IN = 0xC4, 0xC5
PAIR_CREATE, PAIR_SPLIT, PAIR_RESYNC, PAIR_DELETE, PAIR_SET_POLICY = 1, 2, 3, 4, 5
PAIR_REVERSE_RESYNC = 6  # restore the source from the target
PAIR_GROUP_JOIN, PAIR_GROUP_LEAVE = 7, 8  # consistency group membership (docs/pairs.md)
ADDRESSED_LUN = 0xFFFF
BLOCK, STREAM = 0x00, 0x01  # peripheral device types
SPACE_BLOCKS, SPACE_FILEMARKS, SPACE_END_OF_DATA = 0x00, 0x01, 0x03


def inquiry(page: int | None = None, allocation: int = 0xFFFF) -> bytes:
    evpd = 0 if page is None else 1
    return bytes([INQUIRY, evpd, page or 0]) + allocation.to_bytes(2, "big") + b"\0"


def read_capacity16(allocation: int = 32) -> bytes:
    return bytes([READ_CAPACITY_16, 0x10]) + bytes(8) + allocation.to_bytes(4, "big") + bytes(2)


def read16(lba: int, blocks: int) -> bytes:
    return bytes([READ_16, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


def extended_copy_lid4(length: int) -> bytes:
    return bytes([EXTENDED_COPY, LID4]) + bytes(8) + length.to_bytes(4, "big") + bytes(2)


def copy_operation_abort(list_id: int) -> bytes:
    return bytes([EXTENDED_COPY, 0x1C]) + list_id.to_bytes(4, "big") + bytes(10)


def receive_copy_results(action: int, list_id: int = 0, allocation: int = 1024) -> bytes:
    return (
        bytes([RECEIVE_COPY_RESULTS, action])
        + list_id.to_bytes(4, "big")
        + bytes(4)
        + allocation.to_bytes(4, "big")
        + bytes(2)
    )


def rewind() -> bytes:
    return bytes([REWIND, 0, 0, 0, 0, 0])


def write_filemarks6(count: int) -> bytes:
    return bytes([0x10, 0]) + count.to_bytes(3, "big") + b"\0"


def space6(code: int, count: int) -> bytes:
    return bytes([SPACE_6, code]) + count.to_bytes(3, "big", signed=True) + b"\0"


def read6_variable(length: int, sili: bool = False) -> bytes:
    return bytes([READ_6, 0x02 if sili else 0]) + length.to_bytes(3, "big") + b"\0"


def pair_out(action: int, lun: int = ADDRESSED_LUN, byte4: int = 0) -> bytes:
    return bytes([PAIR_OUT, action]) + lun.to_bytes(2, "big") + bytes([byte4]) + bytes(11)


def pair_out_named(action: int, name: bytes, lun: int = ADDRESSED_LUN) -> bytes:
    """PAIR OUT whose parameter data is a name (CREATE's pair name, GROUP JOIN's group)."""
    cdb = bytearray(pair_out(action, lun))
    cdb[10:14] = len(name).to_bytes(4, "big")
    return bytes(cdb)


def report_luns(allocation: int = 8 + 8 * 256) -> bytes:
    return bytes([0xA0, 0, 0, 0, 0, 0]) + allocation.to_bytes(4, "big") + bytes(2)


def luns_reported(data: bytes) -> list[int]:
    """The LUN numbers of a REPORT LUNS answer (peripheral and flat addressing)."""
    end = min(len(data), 8 + int.from_bytes(data[:4], "big"))
    return [((data[i] & 0x3F) << 8) | data[i + 1] for i in range(8, end - 7, 8)]


PAIR_STATUS_LENGTH = 136


def pair_in(lun: int = ADDRESSED_LUN, allocation: int = PAIR_STATUS_LENGTH) -> bytes:
    return bytes([PAIR_IN, 0]) + lun.to_bytes(2, "big") + bytes(6) + allocation.to_bytes(4, "big")


# -- decoders ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Designator:
    """One designation descriptor of VPD page 83h."""

    protocol: int
    code_set: int
    association: int
    designator_type: int
    value: bytes

    def __str__(self) -> str:
        kinds = {1: "T10", 2: "EUI-64", 3: "NAA", 8: "SCSI name"}
        kind = kinds.get(self.designator_type, f"type {self.designator_type}")
        text = self.value.decode(errors="replace") if self.code_set in (2, 3) else None
        return f"{kind} {text if text is not None else self.value.hex()}"


def designators(vpd83: bytes) -> list[Designator]:
    out = []
    end = 4 + int.from_bytes(vpd83[2:4], "big")
    pos = 4
    while pos + 4 <= min(end, len(vpd83)):
        length = vpd83[pos + 3]
        out.append(
            Designator(
                protocol=vpd83[pos] >> 4,
                code_set=vpd83[pos] & 0x0F,
                association=(vpd83[pos + 1] >> 4) & 0x03,
                designator_type=vpd83[pos + 1] & 0x0F,
                value=bytes(vpd83[pos + 4 : pos + 4 + length]),
            )
        )
        pos += 4 + length
    return out


# Which designator names the LU in a CSCD: NAA first (what sg_xcopy picks), then EUI-64,
# then T10 vendor ID; only LU-associated ones that fit the CSCD's 20 bytes.
_PREFERENCE = (3, 2, 1)


def lu_designator(vpd83: bytes) -> Designator:
    usable = [d for d in designators(vpd83) if d.association == 0 and len(d.value) <= 20]
    for kind in _PREFERENCE:
        for d in usable:
            if d.designator_type == kind:
                return d
    if usable:
        return usable[0]
    raise ValueError("VPD page 83h has no designator of the logical unit that fits a CSCD")


@dataclass(frozen=True, slots=True)
class Capacity:
    blocks: int
    block_size: int

    @property
    def bytes(self) -> int:
        return self.blocks * self.block_size


def capacity(data: bytes) -> Capacity:
    last, size = struct.unpack_from(">QI", data)
    return Capacity(last + 1, size)


@dataclass(frozen=True, slots=True)
class CopyLimits:
    """What the copy manager says it takes (OPERATING PARAMETERS, narrowed by VPD 8Fh)."""

    max_cscds: int
    max_segments: int
    max_descriptor_list: int
    max_segment_length: int
    max_inline: int
    max_stream_transfer: int
    data_granularity: int  # bytes
    inline_granularity: int  # bytes
    descriptor_codes: frozenset[int]


def operating_parameters(data: bytes) -> CopyLimits:
    (
        _avail, _snlid, cscds, segments, list_len, seg_len, inline, _held, stream,
        _total, _max, data_gran, inline_gran, _held_gran, ncodes,
    ) = struct.unpack_from(">IB3xHHIIIII2xHBBBB3xB", data)  # fmt: skip
    codes = frozenset(data[44 : 44 + ncodes])
    return CopyLimits(
        max_cscds=cscds,
        max_segments=segments,
        max_descriptor_list=list_len,
        max_segment_length=seg_len or (1 << 32) - 1,
        max_inline=inline,
        max_stream_transfer=stream or (1 << 32) - 1,
        data_granularity=1 << data_gran,
        inline_granularity=1 << inline_gran,
        descriptor_codes=codes,
    )


def narrow_by_vpd8f(limits: CopyLimits, page: bytes) -> CopyLimits:
    """VPD 8Fh may state tighter limits than OPERATING PARAMETERS: take the smaller."""
    seg_len, stream = limits.max_segment_length, limits.max_stream_transfer
    pos, end = 4, min(len(page), 4 + int.from_bytes(page[2:4], "big"))
    while pos + 4 <= end:
        kind, length = struct.unpack_from(">HH", page, pos)
        body = page[pos + 4 : pos + 4 + length]
        if kind == 0x8001 and len(body) >= 12:  # general copy operations
            value = int.from_bytes(body[8:12], "big")
            seg_len = min(seg_len, value) if value else seg_len
        elif kind == 0x9101 and len(body) >= 6:  # stream copy operations
            value = int.from_bytes(body[2:6], "big")
            stream = min(stream, value) if value else stream
        pos += 4 + length
    return CopyLimits(
        limits.max_cscds,
        limits.max_segments,
        limits.max_descriptor_list,
        seg_len,
        limits.max_inline,
        stream,
        limits.data_granularity,
        limits.inline_granularity,
        limits.descriptor_codes,
    )


COPY_STATES = {
    0x01: "completed",
    0x02: "failed",
    0x03: "completed with residual",
    0x11: "in progress",
    0x12: "in progress in the background",
    0x60: "aborted",
}


@dataclass(frozen=True, slots=True)
class CopyStatus:
    state: int
    transferred: int  # bytes
    segments: int
    sense: bytes

    @property
    def running(self) -> bool:
        return self.state in (0x11, 0x12)

    @property
    def words(self) -> str:
        return COPY_STATES.get(self.state, f"status {self.state:#04x}")


def copy_status_lid4(data: bytes) -> CopyStatus:
    (_avail, _sa, state, _counter, _delay, _completion, _field_len, sense_len, units, count,
     segments) = struct.unpack_from(">IBBHIBBBBQH", data)  # fmt: skip
    multiplier = {0: 1, 1: 1 << 10, 2: 1 << 20, 3: 1 << 30, 4: 1 << 40}.get(units, 1)
    return CopyStatus(state, count * multiplier, segments, bytes(data[32 : 32 + sense_len]))


PAIR_STATES = {
    0: "SIMPLEX",
    1: "DUPLEX-PENDING",
    2: "DUPLEX",
    3: "SPLIT-PENDING",
    4: "SPLIT",
    5: "SUSPENDED",
    6: "RESYNC",
    7: "DELETE",
    8: "REVERSE-COPY",
}
POLICIES = {0: "none", 1: "reflect-first", 2: "wait", 3: "merge", 4: "split-and-backup"}


@dataclass(frozen=True, slots=True)
class PairStatus:
    source_state: str
    target_state: str
    suspend_reason: int
    percent: int
    source_lun: int
    target_lun: int
    policy: int
    policy_set: bool
    chunk_size: int
    chunks: int
    dirty: int
    changed: int
    rate: int
    copied: int
    split_ms: int
    name: str
    group: str = ""  # the consistency group (PAIR IN bytes 96-127; older targets: none)
    # The target LUN of every pair of this pair's primary (bytes 128-135; older: none).
    secondary_luns: tuple[int, ...] = ()


def pair_status(d: bytes) -> PairStatus:
    u = struct.unpack_from(">BBBBHHBBIQQQQQQ", d, 2)
    return PairStatus(
        PAIR_STATES.get(u[0], f"{u[0]:#x}"),
        PAIR_STATES.get(u[1], f"{u[1]:#x}"),
        u[2],
        u[3],
        u[4],
        u[5],
        u[6],
        bool(u[7] & 1),
        u[8],
        u[9],
        u[10],
        u[11],
        u[12],
        u[13],
        u[14],
        bytes(d[64:96]).rstrip(b"\0").decode(errors="replace"),
        bytes(d[96:128]).rstrip(b"\0").decode(errors="replace"),
        tuple(
            int.from_bytes(d[130 + 2 * i : 132 + 2 * i], "big")
            for i in range(min(d[128], 3) if len(d) >= 136 else 0)
        ),
    )
