"""A tape's objects in an S3 bucket (the layout backing.tape_s3 describes): the names under
``PREFIX BARCODE/``, the entry and segment-index formats, S3's part-size rules, and the
calls that read and write the objects, each failure named as the medium's
(backing.s3_client). Nothing here knows where a record is on the tape: backing.tape_s3
keeps that.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from typing import Any

from crc32c import crc32c

from backing.s3_client import S3Location, not_found, s3_error
from backing.tape_image import (
    ENTRY,
    ENTRY_SIZE,
    MIN_CAPACITY,
    Kind,
    TapeImageError,
    default_early_warning,
)
from backing.tape_s3_spool import lengths_bytes, lengths_from

META = "tape.json"
SEGMENT = "seg-{:08d}"
INDEX_SUFFIX = ".idx"
INDEX_MAGIC = b"TDSEGIX1"
MIN_PART = 5 << 20  # S3's smallest part but the last
FIRST_PART = 8 << 20
MAX_PART = 4 << 30  # below S3's 5 GiB
PARTS_PER_STEP = 1000


def part_target(part_number: int, first: int = FIRST_PART) -> int:
    """The size a segment's part ``part_number`` (1-based) is uploaded at: doubling every
    thousand parts, so 10,000 parts of a segment hold ``first`` x 1,023,000 bytes (8 TB
    from 8 MiB) and S3's limit is never met before a tape's capacity is."""
    return min(MAX_PART, max(MIN_PART, first) << ((part_number - 1) // PARTS_PER_STEP))


def entry_header(kind: Kind, payload: bytes | bytearray | memoryview) -> bytes:
    head = ENTRY.pack(0x5452, kind, 0, len(payload), crc32c(payload), 0)
    return head[:12] + crc32c(head[:12]).to_bytes(4, "big")


FILEMARK_ENTRY = entry_header(Kind.FILEMARK, b"")


def entry_ok(head: bytes, payload: bytes, length: int) -> bool:
    """Whether ``head`` and ``payload`` are the whole, unchanged entry of an index length
    (-1: a file mark)."""
    if len(head) != ENTRY_SIZE:
        return False
    magic, kind, _flags, n, payload_crc, head_crc = ENTRY.unpack(head)
    if magic != 0x5452 or head_crc != crc32c(head[:12]):
        return False
    if length < 0:
        return kind == Kind.FILEMARK and n == 0
    return kind == Kind.RECORD and n == length == len(payload) and crc32c(payload) == payload_crc


class TapeObjects:
    """The objects of one tape (barcode) in a bucket."""

    def __init__(self, client: Any, location: S3Location, barcode: str) -> None:
        self.client = client
        self.bucket = location.bucket
        self.key = f"{location.prefix}{barcode}/"
        self.path = f"s3://{self.bucket}/{self.key}"

    def call(self, op: str, key: str, fn: Callable[..., Any], **kw: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, Key=key, **kw)
        except Exception as err:
            if not_found(err):
                raise
            raise s3_error(op, key)(err) from err

    def get_meta(self) -> dict[str, Any]:
        try:
            body = self.call("read", self.key + META, self.client.get_object)["Body"].read()
        except Exception as err:
            if not_found(err):
                raise TapeImageError(f"{self.path}: no tape (no {META})") from err
            raise
        try:
            meta = json.loads(body)
            int(meta["capacity"]), int(meta["early_warning"])
        except (ValueError, KeyError, TypeError) as err:
            raise TapeImageError(f"{self.path}{META}: not a tape description") from err
        return meta

    def listing(self, prefix: str) -> dict[str, int]:
        """Key and size of every object whose key starts with ``prefix``."""
        out: dict[str, int] = {}
        pages = self.client.get_paginator("list_objects_v2")
        try:
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", ()):
                    out[obj["Key"]] = obj["Size"]
        except Exception as err:
            raise s3_error("read", prefix)(err) from err
        return out

    def uploads(self) -> list[tuple[str, str]]:
        """(key, upload id) of every multipart upload in progress under the tape."""
        out: list[tuple[str, str]] = []
        pages = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.key):
                out += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", ())]
        except Exception as err:
            raise s3_error("read", self.key)(err) from err
        return out

    def segment_key(self, number: int) -> str:
        return self.key + SEGMENT.format(number)

    def index_key(self, number: int) -> str:
        return self.segment_key(number) + INDEX_SUFFIX

    def read_index(self, number: int) -> array:
        """The entry lengths segment ``number``'s index holds (-1: a file mark)."""
        raw = self.call("read", self.index_key(number), self.client.get_object)["Body"].read()
        if raw[:8] != INDEX_MAGIC or len(raw) < 16:
            raise TapeImageError(f"{self.index_key(number)}: not a segment index")
        count = int.from_bytes(raw[8:16], "big")
        lengths = lengths_from(raw[16:])
        if len(lengths) != count:
            raise TapeImageError(f"{self.index_key(number)}: index holds {len(lengths)}")
        return lengths

    def put_index(self, number: int, lengths: array) -> None:
        body = INDEX_MAGIC + len(lengths).to_bytes(8, "big") + lengths_bytes(lengths)
        self.call("write", self.index_key(number), self.client.put_object, Body=body)

    def put(self, key: str, body: bytes | bytearray) -> None:
        self.call("write", key, self.client.put_object, Body=body)

    def get_range(self, number: int, at: int, length: int) -> bytes:
        key = self.segment_key(number)
        answer = self.call(
            "read", key, self.client.get_object, Range=f"bytes={at}-{at + length - 1}"
        )
        try:
            return answer["Body"].read()
        except Exception as err:
            raise s3_error("read", key)(err) from err

    def delete_segment(self, number: int) -> None:
        self.call("write", self.index_key(number), self.client.delete_object)
        self.call("write", self.segment_key(number), self.client.delete_object)

    # -- multipart uploads ------------------------------------------------------------
    def create_upload(self, key: str) -> str:
        return str(self.call("write", key, self.client.create_multipart_upload)["UploadId"])

    def list_parts(self, key: str, upload_id: str) -> list[dict[str, Any]]:
        """The parts of ``upload_id`` from 1 on with no gap, as completing wants them."""
        found: list[dict[str, Any]] = []
        pages = self.client.get_paginator("list_parts")
        try:
            for page in pages.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                found += page.get("Parts", ())
        except Exception as err:
            raise s3_error("read", key)(err) from err
        found.sort(key=lambda p: p["PartNumber"])
        parts = []
        for want, part in enumerate(found, start=1):
            if part["PartNumber"] != want:
                break
            parts.append({"PartNumber": want, "ETag": part["ETag"], "Size": part["Size"]})
        return parts

    def abort(self, key: str, upload_id: str) -> None:
        self.call("write", key, self.client.abort_multipart_upload, UploadId=upload_id)

    def complete(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        done = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]
        self.call(
            "write",
            key,
            self.client.complete_multipart_upload,
            UploadId=upload_id,
            MultipartUpload={"Parts": done},
        )

    def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | bytearray
    ) -> dict[str, Any]:
        answer = self.call(
            "write",
            key,
            self.client.upload_part,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": answer["ETag"], "Size": len(body)}


def create_tape(client: Any, location: S3Location, barcode: str, capacity: int) -> None:
    """A blank tape: its ``tape.json``. Refused when the barcode has one."""
    if capacity < MIN_CAPACITY:
        raise ValueError(f"capacity must be at least {MIN_CAPACITY} bytes, not {capacity}")
    key = f"{location.prefix}{barcode}/{META}"
    body = json.dumps(
        {"capacity": capacity, "early_warning": default_early_warning(capacity), "version": 1}
    ).encode()
    try:
        client.put_object(Bucket=location.bucket, Key=key, Body=body, IfNoneMatch="*")
    except Exception as err:
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "412"):
            raise FileExistsError(f"s3://{location.bucket}/{key} exists") from err
        raise s3_error("write", key)(err) from err
