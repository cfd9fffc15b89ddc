"""The label record the target writes at the end of a backup (WRITE LABEL, C2h), and reads
back to check one (CHECK LABEL, C3h). docs/xcopy.md, "Self-describing backups".

One 512-byte record: a magic line, then one line of JSON, NUL-padded::

    TARGETD LABEL END 1
    {"id":"...","complete":true,"sha256":"<64 hex>","bytes":N,"records":R,"sealed":"<UTC>"}

``id`` is the host's (the inline data of the WRITE LABEL segment: the backup's identifier
in its own header label), so a reader can tell that this end belongs to that beginning.
``sha256`` and ``bytes`` are what the target hashed between START DIGEST and WRITE LABEL.
The record is written only when every segment that fed the digest succeeded; a backup
without it is partial, whatever else the medium holds.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

MAGIC = b"TARGETD LABEL END 1\n"
SIZE = 512
MAX_ID = 64
ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True, slots=True)
class EndLabel:
    id: str
    sha256: str
    length: int  # "bytes" on the medium
    records: int
    sealed: str
    complete: bool = True

    def encode(self) -> bytes:
        body = {
            "id": self.id,
            "complete": self.complete,
            "sha256": self.sha256,
            "bytes": self.length,
            "records": self.records,
            "sealed": self.sealed,
        }
        out = MAGIC + json.dumps(body, separators=(",", ":")).encode() + b"\n"
        assert len(out) <= SIZE
        return out.ljust(SIZE, b"\0")


def valid_id(raw: bytes) -> bool:
    return ID.fullmatch(raw) is not None


def utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def decode(record: bytes) -> EndLabel | None:
    """The end label in ``record``, or None when it is not one."""
    if len(record) != SIZE or not record.startswith(MAGIC):
        return None
    try:
        fields = json.loads(record[len(MAGIC) :].split(b"\0", 1)[0])
        return EndLabel(
            id=str(fields["id"]),
            sha256=str(fields["sha256"]),
            length=int(fields["bytes"]),
            records=int(fields["records"]),
            sealed=str(fields["sealed"]),
            complete=fields["complete"] is True,
        )
    except (ValueError, TypeError, KeyError):
        return None
