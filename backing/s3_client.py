"""The S3 client of the tapes kept in a bucket (backing.tape_s3): where a bucket is, a
boto3 client for it, and S3 failures as the store errors a LU answers.

boto3 on the caller's thread (a drive's I/O thread), not aiobotocore on the event loop:
docs/tape.md gives the measurement (bench/s3_clients.py).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from backing.errors import MediumReadError, MediumWriteError


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where a library's cartridges live: ``s3://bucket/prefix`` at ``endpoint`` (None:
    AWS's own, by region). Credentials are never here: boto3 takes them from the usual
    AWS variables, the shared credentials file or an instance role."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None

    @classmethod
    def parse(cls, url: str, endpoint: str | None = None, region: str | None = None) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"{url!r} is not an s3://bucket/prefix address")
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(parts.netloc, prefix, endpoint, region)

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            # An unreachable endpoint fails a command (or the start) in about a minute,
            # not botocore's default of minutes per call.
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=4,
            s3={"addressing_style": "path"},
        )
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region or "us-east-1", config=config
        )


def s3_error(op: str, key: str) -> Callable[[BaseException], OSError]:
    """An S3 failure as the store error a LU answers (MEDIUM ERROR on a read, WRITE
    ERROR on a write), the client's exception kept as its cause."""

    def wrap(err: BaseException) -> OSError:
        cls = MediumReadError if op == "read" else MediumWriteError
        out = cls(errno.EIO, f"s3 object {key}", op)
        out.__cause__ = err
        return out

    return wrap


def not_found(err: BaseException) -> bool:
    """The S3 error says the key (or bucket) is not there."""
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")
