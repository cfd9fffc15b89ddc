"""Typed failures of a backing store, so every caller can tell a full disk from a bad one.

The OS reports both as plain ``OSError``; a caller that wants to answer a host (the SCSI
layer's sense data) or stop a copy (a pair going SUSPENDED with a reason) needs to know
which happened, where, and whether it was a read or a write. These subclasses of
``OSError`` carry that, so code that only knows ``except OSError`` still catches them.

This module knows nothing of SCSI: the mapping to sense codes lives in ``scsi/``.
"""

from __future__ import annotations

import errno

# errno values that mean "no room": the file system, or the user's quota, is full.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class StoreError(OSError):
    """A read, write or flush of a backing store failed. ``op`` is "read", "write" or
    "flush"; ``offset``/``length`` the byte range (None for a flush)."""

    def __init__(
        self,
        err: int,
        path: str,
        op: str,
        offset: int | None = None,
        length: int | None = None,
    ) -> None:
        where = "" if offset is None else f" at byte {offset} (+{length})"
        super().__init__(err, f"{op} of {path}{where} failed: {errno.errorcode.get(err, err)}")
        self.path = path
        self.op = op
        self.offset = offset
        self.length = length


class SpaceExhausted(StoreError):
    """The file system (or quota) had no room for a write or an allocation."""


class MediumReadError(StoreError):
    """The file system could not read the range back (EIO on a read)."""


class MediumWriteError(StoreError):
    """The file system could not store the range (EIO on a write or a flush)."""


def classify(
    exc: OSError, path: str, op: str, offset: int | None = None, length: int | None = None
) -> OSError:
    """The typed error for ``exc``, or ``exc`` itself when it is none of the above (a bug,
    EBADF, ...: those stay what they are)."""
    if isinstance(exc, StoreError) or exc.errno is None:
        return exc
    if exc.errno in _NO_SPACE and op != "read":
        cls: type[StoreError] = SpaceExhausted
    elif exc.errno == errno.EIO:
        cls = MediumReadError if op == "read" else MediumWriteError
    else:
        return exc
    return cls(exc.errno, path, op, offset, length)
