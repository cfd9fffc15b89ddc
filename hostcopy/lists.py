"""EXTENDED COPY(LID4) parameter lists for a backup or a restore, cut to the copy
manager's limits: any volume is a sequence of lists, each within the segment count, the
descriptor list length and the segment length the copy manager reported, sent in turn.

A backup is, on the stream device, at its current position: one label record (inline
data, segment 04h; see hostcopy.label), START DIGEST (vendor C1h: the target hashes what
follows), the volume in records of ``record`` bytes (segment 00h; the last may be
shorter), WRITE LABEL (vendor C2h: the target writes the end label with the SHA-256 and
the backup's identifier, the inline data) and a file mark (segment 10h). A restore reads
the records back onto a block device (segment 01h) once the label has been read by the
host; a verify reads them to a NUL block device. Both hash what they read (C1h) and end
with CHECK LABEL (C3h): the target compares its digest with the end label's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from hostcopy.commands import BLOCK, STREAM, CopyLimits, Designator

CSCD_LENGTH = 32
LID4_HEADER = 48
BLOCK_TO_STREAM, STREAM_TO_BLOCK, INLINE_TO_STREAM, WRITE_FILEMARKS = 0x00, 0x01, 0x04, 0x10
START_DIGEST, WRITE_LABEL, CHECK_LABEL = 0xC1, 0xC2, 0xC3  # vendor: docs/xcopy.md
STREAM_SEGMENT = 24  # 00h and 01h: 4 + DESCRIPTOR LENGTH 0014h
INLINE_SEGMENT = 16  # 04h and C2h
FILEMARK_SEGMENT = 12
DIGEST_SEGMENT = 12  # C1h and C3h
LIST_ID_USAGE_HOLD = 0x00  # results kept until reported
IMMED = 0x01
MiB = 1 << 20
DEFAULT_RECORD = 1 * MiB


def cscd(designator: Designator, device_type: int, block_length: int) -> bytes:
    """An identification descriptor (E4h) naming an LU by its VPD 83h designator.

    Byte 28 holds the device type's parameters: PAD and FIXED for a stream device (both
    0: variable records, no padding), PAD for a block device; bytes 29-31 the block length
    (0 for a variable-record stream device)."""
    value = designator.value
    head = bytes(
        [
            0xE4,
            device_type & 0x1F,
            0,
            0,  # RELATIVE INITIATOR PORT IDENTIFIER
            (designator.protocol << 4) | designator.code_set,
            (designator.association << 4) | designator.designator_type,
            0,
            len(value),
        ]
    )
    out = head + value.ljust(20, b"\0") + bytes([0]) + block_length.to_bytes(3, "big")
    assert len(out) == CSCD_LENGTH
    return out


def block_to_stream(src: int, dst: int, length: int, block_size: int, lba: int) -> bytes:
    """00h: ``length`` bytes from ``lba`` as one variable-length record."""
    return struct.pack(
        ">BBHHHx3s2xHQ",
        BLOCK_TO_STREAM, 0, STREAM_SEGMENT - 4, src, dst,
        length.to_bytes(3, "big"), length // block_size, lba,
    )  # fmt: skip


def stream_to_block(src: int, dst: int, length: int, block_size: int, lba: int) -> bytes:
    """01h: one record of ``length`` bytes onto ``lba``."""
    return struct.pack(
        ">BBHHHx3s2xHQ",
        STREAM_TO_BLOCK, 0, STREAM_SEGMENT - 4, src, dst,
        length.to_bytes(3, "big"), length // block_size, lba,
    )  # fmt: skip


def inline_to_stream(dst: int, offset: int, length: int) -> bytes:
    return struct.pack(">BBHHHII", INLINE_TO_STREAM, 0, INLINE_SEGMENT - 4, 0, dst, offset, length)


def start_digest(stream: int) -> bytes:
    """C1h: the target hashes what the following segments write to or read from ``stream``."""
    return struct.pack(">BBHHH4x", START_DIGEST, 0, DIGEST_SEGMENT - 4, 0, stream)


def write_label(stream: int, offset: int, length: int) -> bytes:
    """C2h: the end label, carrying the digest and the identifier in the inline data."""
    return struct.pack(">BBHHHII", WRITE_LABEL, 0, INLINE_SEGMENT - 4, 0, stream, offset, length)


def check_label(stream: int) -> bytes:
    """C3h: the next record of ``stream`` must be an end label with the digest hashed."""
    return struct.pack(">BBHHH4x", CHECK_LABEL, 0, DIGEST_SEGMENT - 4, 0, stream)


def nul_cscd(block_length: int) -> bytes:
    """A NUL block device (E4h with the NUL bit): it takes writes and keeps nothing, so
    a verify reads the backup's records into it."""
    out = bytes([0xE4, 0x20 | BLOCK, 0, 0, 0x01, 0x03, 0, 0]) + bytes(20)
    return out + bytes([0]) + block_length.to_bytes(3, "big")


def write_filemarks(dst: int, count: int = 1) -> bytes:
    return struct.pack(">BBHHHx3s", WRITE_FILEMARKS, 0, FILEMARK_SEGMENT - 4, 0, dst,
                       count.to_bytes(3, "big"))  # fmt: skip


def lid4(list_id: int, cscds: bytes, segments: bytes, inline: bytes = b"") -> bytes:
    """The 48-byte LID4 header (IMMED, LIST ID USAGE 00b) and the descriptors."""
    header = bytearray(LID4_HEADER)
    header[0] = 0x01  # LIST FORMAT
    header[1] = LIST_ID_USAGE_HOLD << 3
    header[15] = IMMED
    header[20:24] = list_id.to_bytes(4, "big")
    header[42:44] = len(cscds).to_bytes(2, "big")
    header[44:46] = len(segments).to_bytes(2, "big")
    header[46:48] = len(inline).to_bytes(2, "big")
    return bytes(header) + cscds + segments + inline


@dataclass(frozen=True, slots=True)
class Layout:
    """How a volume of ``length`` bytes lies on the stream device."""

    length: int
    block_size: int
    record: int

    @property
    def records(self) -> int:
        return -(-self.length // self.record)

    def extents(self) -> Iterator[tuple[int, int]]:
        """(byte offset, length) of each record."""
        for offset in range(0, self.length, self.record):
            yield offset, min(self.record, self.length - offset)


def record_size(limits: CopyLimits, block_size: int, wanted: int = DEFAULT_RECORD) -> int:
    """The record length: what was asked, within the stream transfer and segment limits,
    a multiple of the block size and of the data segment granularity, and small enough
    that its block count fits the segment's 16-bit field."""
    unit = max(block_size, limits.data_granularity)
    ceiling = min(wanted, limits.max_stream_transfer, limits.max_segment_length,
                  0xFFFF * block_size, 0xFFFFFF)  # fmt: skip
    size = ceiling - ceiling % unit
    if size <= 0:
        raise ValueError(
            f"no record length fits: block size {block_size}, stream transfer limit "
            f"{limits.max_stream_transfer}, segment length limit {limits.max_segment_length}"
        )
    return size


@dataclass(frozen=True, slots=True)
class Volume:
    """One volume of a backup: its designator, how it lies on the medium, its label."""

    designator: Designator
    layout: Layout
    label: bytes
    backup_id: str = ""  # the end label's identifier; "" writes none (no digest)


def backup_lists(
    *,
    first_list_id: int,
    destination: Designator,
    volumes: list[Volume],
    limits: CopyLimits,
) -> list[bytes]:
    """The lists of a backup of one or more volumes, to be sent in turn. Each volume
    becomes one tape file: its label (inline data), its records, a file mark. Segments
    are packed into as few lists as the limits allow, so a group's volumes can go in one
    EXTENDED COPY; the CSCDs are the volumes (0..n-1) and the destination (n)."""
    n = len(volumes)
    if not 1 <= n <= limits.max_cscds - 1:
        raise ValueError(
            f"{n} volumes: one list names at most {limits.max_cscds - 1} beside the destination"
        )
    cscds = b"".join(cscd(v.designator, BLOCK, v.layout.block_size) for v in volumes)
    cscds += cscd(destination, STREAM, 0)
    # (segment bytes, inline bytes it carries, its code): an inline segment's offset is
    # fixed when its list is assembled.
    items: list[tuple[bytes, bytes, int]] = []
    for index, v in enumerate(volumes):
        label = v.label
        if len(label) % limits.inline_granularity or len(label) > limits.max_inline:
            raise ValueError(f"a {len(label)}-byte label does not fit the inline data limits")
        items.append((b"", label, INLINE_TO_STREAM))
        if v.backup_id:
            items.append((start_digest(n), b"", START_DIGEST))
        bs = v.layout.block_size
        items += [
            (block_to_stream(index, n, size, bs, offset // bs), b"", BLOCK_TO_STREAM)
            for offset, size in v.layout.extents()
        ]
        if v.backup_id:
            items.append((b"", v.backup_id.encode(), WRITE_LABEL))
        items.append((write_filemarks(n), b"", WRITE_FILEMARKS))
    return _pack(items, cscds, first_list_id, n, limits)


def _pack(
    items: list[tuple[bytes, bytes, int]],
    cscds: bytes,
    first_list_id: int,
    stream: int,
    limits: CopyLimits,
) -> list[bytes]:
    """Segments into as few lists as the limits allow, in order."""
    room = limits.max_descriptor_list - len(cscds)
    unit = limits.inline_granularity
    lists: list[bytes] = []
    segs, inline, count = b"", b"", 0
    for seg, data, code in items:
        size = INLINE_SEGMENT if data else len(seg)
        padded = data + bytes(-len(data) % unit)  # the next inline offset stays aligned
        full = count + 1 > limits.max_segments or len(segs) + size > room
        if full or (data and len(inline) + len(padded) > limits.max_inline):
            if not count:
                raise ValueError("the copy manager's limits leave no room for a segment")
            lists.append(lid4(first_list_id + len(lists), cscds, segs, inline))
            segs, inline, count = b"", b"", 0
        if data:
            build = inline_to_stream if code == INLINE_TO_STREAM else write_label
            seg = build(stream, len(inline), len(data))
            inline += padded
        segs += seg
        count += 1
    lists.append(lid4(first_list_id + len(lists), cscds, segs, inline))
    return lists


def restore_lists(
    *,
    first_list_id: int,
    source: Designator,
    destination: Designator,
    layout: Layout,
    limits: CopyLimits,
    destination_lba: int = 0,
    check: bool = True,
    records: int | None = None,
) -> list[bytes]:
    """The lists of a restore: the stream device positioned after the label, each record
    onto the block device from ``destination_lba``. With ``check`` the target hashes the
    records and compares the end label after them (C1h ... C3h): a restore of data that
    does not match its label fails at its end. ``records``: only the first so many."""
    cscds = cscd(source, STREAM, 0) + cscd(destination, BLOCK, layout.block_size)
    return _read_back(first_list_id, cscds, layout, limits, destination_lba, check, records)


def verify_lists(
    *, first_list_id: int, source: Designator, layout: Layout, limits: CopyLimits
) -> list[bytes]:
    """The lists of a verify the target runs: the stream device positioned after the
    label, each record read into a NUL block device and hashed, and the end label after
    them compared (C3h). No byte crosses the network."""
    cscds = cscd(source, STREAM, 0) + nul_cscd(layout.block_size)
    return _read_back(first_list_id, cscds, layout, limits, 0, True, None)


def _read_back(
    first_list_id: int,
    cscds: bytes,
    layout: Layout,
    limits: CopyLimits,
    lba: int,
    check: bool,
    records: int | None,
) -> list[bytes]:
    bs = layout.block_size
    items: list[tuple[bytes, bytes, int]] = []
    if check:
        items.append((start_digest(0), b"", START_DIGEST))
    extents = list(layout.extents())[:records]
    items += [
        (stream_to_block(0, 1, size, bs, lba + offset // bs), b"", STREAM_TO_BLOCK)
        for offset, size in extents
    ]
    if check:
        items.append((check_label(0), b"", CHECK_LABEL))
    return _pack(items, cscds, first_list_id, 0, limits)


def sg_raw_line(device: str, list_file: str, length: int) -> str:
    """The sg_raw command that sends one parameter list as EXTENDED COPY(LID4)."""
    cdb = bytes([0x83, 0x01]) + bytes(8) + length.to_bytes(4, "big") + bytes(2)
    return f"sg_raw -s {length} -i {list_file} {device} " + " ".join(f"{b:02x}" for b in cdb)


def sg_raw_status_line(device: str, list_id: int, allocation: int = 1024) -> str:
    """The sg_raw command for RECEIVE COPY STATUS(LID4) of ``list_id`` (sg_copy_results
    --status sends the LID1 form, whose one-byte list identifier cannot name most lists)."""
    cdb = bytes([0x84, 0x05]) + list_id.to_bytes(4, "big") + bytes(4)
    cdb += allocation.to_bytes(4, "big") + bytes(2)
    return f"sg_raw -r {allocation} {device} " + " ".join(f"{b:02x}" for b in cdb)
