"""A tape library's cartridges in an S3 bucket (backing.tape_s3), with the library's own
state kept in a local directory, as for a directory of images: the inventory
(``inventory.json``) and, under ``spool/``, the spool and journal of each tape being
written (what a WRITE's GOOD stands on until the next sync point).

Same interface as :class:`backing.tape_library.TapeDirectory`, so the changer takes
either. Exporting a cartridge moves its objects under ``PREFIX exported/BARCODE/``
(server-side copies, then deletes).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from backing.s3_client import S3Location
from backing.tape_library import LibraryError, MoveProgress, TapeDirectory
from backing.tape_s3 import S3Tape
from backing.tape_s3_objects import INDEX_SUFFIX, META, create_tape

EXPORTED_PREFIX = "exported/"


class S3TapeStore(TapeDirectory):
    def __init__(
        self,
        path: Path,
        capacity: int,
        location: S3Location,
        *,
        client: Any = None,
        spool_dir: Path | None = None,
    ) -> None:
        super().__init__(path, capacity)
        self.location = location
        self._client = client
        self._lock = threading.Lock()
        self.spool_dir = self.path / "spool" if spool_dir is None else Path(spool_dir)

    @property
    def client(self) -> Any:
        with self._lock:  # made once, on first use (a thread of some LU)
            if self._client is None:
                self._client = self.location.client()
            return self._client

    def describe(self) -> str:
        return f"s3://{self.location.bucket}/{self.location.prefix}"

    def _tape_prefixes(self, under: str) -> list[str]:
        """Barcodes with a ``tape.json`` directly under ``under``."""
        found: list[str] = []
        pages = self.client.get_paginator("list_objects_v2")
        try:
            for page in pages.paginate(Bucket=self.location.bucket, Prefix=under, Delimiter="/"):
                found += [p["Prefix"][len(under) : -1] for p in page.get("CommonPrefixes", ())]
        except Exception as err:
            raise LibraryError(f"{self.describe()}: cannot list the bucket: {err}") from err
        return found

    def barcodes(self) -> list[str]:
        prefix = self.location.prefix
        return sorted(
            b
            for b in self._tape_prefixes(prefix)
            if f"{prefix}{b}/" != f"{prefix}{EXPORTED_PREFIX}" and self.exists(b)
        )

    def _head(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.location.bucket, Key=key)
        except Exception as err:
            code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise LibraryError(f"{self.describe()}: {key}: {err}") from err
        return True

    def sweep(self) -> list[str]:
        """Abort every multipart upload under the library's prefix that no local journal
        claims (a crash of another host, a lost state directory, a hand-made upload): a
        cartridge whose journal is here is mended when it is opened. Returns the keys."""
        bucket, prefix = self.location.bucket, self.location.prefix
        aborted: list[str] = []
        try:
            pages = self.client.get_paginator("list_multipart_uploads")
            for page in pages.paginate(Bucket=bucket, Prefix=prefix):
                for upload in page.get("Uploads", ()):
                    key = upload["Key"]
                    barcode = key[len(prefix) :].split("/", 1)[0]
                    if (self.spool_dir / f"{barcode}.journal").exists():
                        continue
                    self.client.abort_multipart_upload(
                        Bucket=bucket, Key=key, UploadId=upload["UploadId"]
                    )
                    aborted.append(key)
        except Exception as err:
            raise LibraryError(f"{self.describe()}: cannot clean up uploads: {err}") from err
        return aborted

    def exists(self, barcode: str) -> bool:
        if barcode == EXPORTED_PREFIX.rstrip("/"):
            return False
        return self._head(f"{self.location.prefix}{barcode}/{META}")

    def exported(self, barcode: str) -> bool:
        return self._head(f"{self.location.prefix}{EXPORTED_PREFIX}{barcode}/{META}")

    def create(self, barcode: str, capacity: int | None = None) -> None:
        if barcode == EXPORTED_PREFIX.rstrip("/"):
            raise LibraryError(f"{barcode!r} is reserved in an S3 library")
        try:
            create_tape(self.client, self.location, barcode, capacity or self.capacity)
        except FileExistsError as err:
            raise LibraryError(f"cartridge {barcode} exists") from err

    def open(self, barcode: str, *, read_only: bool = False) -> S3Tape:
        return S3Tape(self.client, self.location, barcode, self.spool_dir, read_only=read_only)

    def usage(self, barcode: str) -> tuple[int, int]:
        """(bytes used, capacity): the indexed segments' data objects and ``tape.json``."""
        try:
            return self._usage(barcode)
        except (LibraryError, OSError):
            raise
        except Exception as err:
            raise LibraryError(f"{self.describe()}{barcode}: {err}") from err

    def _usage(self, barcode: str) -> tuple[int, int]:
        prefix = f"{self.location.prefix}{barcode}/"
        bucket = self.location.bucket
        sizes: dict[str, int] = {}
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix):
            sizes.update((o["Key"], o["Size"]) for o in page.get("Contents", ()))
        used = sum(size for key, size in sizes.items() if key + INDEX_SUFFIX in sizes)
        meta = json.loads(self.client.get_object(Bucket=bucket, Key=prefix + META)["Body"].read())
        return used, int(meta["capacity"])

    def export(self, barcode: str, progress: MoveProgress | None = None) -> str:
        """The cartridge's objects move under ``exported/`` (copy, then delete);
        ``progress(done, total)`` follows the bytes copied, as the copies go."""
        bucket = self.location.bucket
        src = f"{self.location.prefix}{barcode}/"
        dst = f"{self.location.prefix}{EXPORTED_PREFIX}{barcode}/"
        if self.exported(barcode):
            raise LibraryError(f"s3://{bucket}/{dst} exists")
        sizes: dict[str, int] = {}
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=src):
            sizes.update((o["Key"], o["Size"]) for o in page.get("Contents", ()))
        # tape.json last: until it is there the exported copy is not a tape, and until it
        # goes from the library the cartridge is still whole there.
        keys = sorted(sizes, key=lambda k: k.endswith(META))
        total, done = sum(sizes.values()), 0
        report = progress or (lambda done, total: None)
        report(0, total)

        def copied(n: int) -> None:  # boto3's transfer threads, part by part
            nonlocal done
            with lock:
                done += n
                now = done
            report(min(now, total), total)

        lock = threading.Lock()
        for key in keys:
            before = done
            self.client.copy(
                {"Bucket": bucket, "Key": key}, bucket, dst + key[len(src) :], Callback=copied
            )
            with lock:  # a copy too small for the callback to be called still counts
                done = before + sizes[key]
        report(total, total)
        for key in reversed(keys):
            self.client.delete_object(Bucket=bucket, Key=key)
        return f"s3://{bucket}/{dst}"
