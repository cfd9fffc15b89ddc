"""The label record at the head of every backup the tool writes: what was backed up, how
it lies on the medium, and when. 512 bytes: a magic line, then JSON, NUL-padded.

The data never passes through the host, so the label says nothing about the bytes
themselves; `verify` compares them with the volume."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MAGIC = b"TARGETD-COPY LABEL 1\n"
LABEL_SIZE = 512


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
