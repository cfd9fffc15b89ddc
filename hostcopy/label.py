"""The labels of a backup on the medium (docs/backup.md, "The backup on the medium").

The head label, the first record, is the host's: what was backed up, how it lies on the
medium, when, and the backup's identifier. 512 bytes: a magic line, then JSON,
NUL-padded. The data never passes through the host, so the head label says nothing of
the bytes and does not make the backup complete.

The end label, the last record before the file mark, is the target's (WRITE LABEL,
vendor segment C2h): the SHA-256 and length of every byte the target wrote after the head
label, and the same identifier. It is written only once all of them are on the medium: a
backup without it is partial, whatever else it holds."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MAGIC = b"TARGETD-COPY LABEL 1\n"
END_MAGIC = b"TARGETD LABEL END 1\n"
LABEL_SIZE = 512
# What the labels alone can say (``list``); only ``verify`` reads the data back.
SEALED, PARTIAL, UNSEALED, INCONSISTENT = "sealed", "partial", "no-digest", "inconsistent"


@dataclass(frozen=True, slots=True)
class Label:
    source: str  # the designator, as ``hostcopy.commands.Designator.__str__`` prints it
    source_designator: str  # its bytes in hex
    length: int
    block_size: int
    record: int
    created: str  # ISO 8601 UTC, when the backup was started
    pair: str = ""
    split_time: str = ""  # ISO 8601 UTC of the pair's split, "" when not from a pair
    policy: str = ""
    device: str = ""  # what the host called the source
    id: str = ""  # matches the end label's; "" in backups made before end labels existed
    group: str = ""  # the pair's consistency group, "" for none

    def encode(self) -> bytes:
        body = MAGIC + json.dumps(asdict(self), separators=(",", ":")).encode() + b"\n"
        if len(body) > LABEL_SIZE:
            raise ValueError(f"label of {len(body)} bytes does not fit {LABEL_SIZE}")
        return body.ljust(LABEL_SIZE, b"\0")


def decode(record: bytes) -> Label | None:
    """The label in a record, or None when the record is not one."""
    if not record.startswith(MAGIC):
        return None
    body = record[len(MAGIC) :].split(b"\0", 1)[0]
    try:
        fields = json.loads(body)
        return Label(**{k: fields[k] for k in Label.__dataclass_fields__ if k in fields})
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class EndLabel:
    id: str
    sha256: str
    bytes: int
    records: int
    sealed: str  # ISO 8601 UTC, when the target wrote it
    complete: bool


def decode_end(record: bytes) -> EndLabel | None:
    """The end label in a record, or None when the record is not one."""
    if len(record) != LABEL_SIZE or not record.startswith(END_MAGIC):
        return None
    try:
        f = json.loads(record[len(END_MAGIC) :].split(b"\0", 1)[0])
        return EndLabel(str(f["id"]), str(f["sha256"]), int(f["bytes"]), int(f["records"]),
                        str(f["sealed"]), f["complete"] is True)  # fmt: skip
    except (ValueError, TypeError, KeyError):
        return None


def state(head: Label, end: EndLabel | None) -> str:
    """From the labels alone (no data read): sealed, an end label of this backup that
    agrees with the head label (the target wrote it after the last record); partial, none
    (or another's); inconsistent, one whose byte or record count is not what the head
    label's length and record size give (a label lies); no-digest, a backup made before
    end labels existed. Sealed is not verified: a flipped data byte shows only in
    ``verify``."""
    if not head.id:
        return UNSEALED
    if end is None or end.id != head.id or not end.complete:
        return PARTIAL
    if disagreement(head, end):
        return INCONSISTENT
    return SEALED


def disagreement(head: Label, end: EndLabel) -> str:
    """What the end label says against the head label, in words ("" when they agree):
    the end label counts what the target wrote, the head label what the host asked."""
    records = -(-head.length // head.record) if head.record > 0 else end.records
    if end.bytes == head.length and end.records == records:
        return ""
    return (
        f"the end label counts {end.bytes} bytes in {end.records} records; the head label"
        f" gives {head.length} bytes in records of {head.record} ({records} records)"
    )
