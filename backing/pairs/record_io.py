"""What every on-disk (or in-cluster) pair record shares: the lane its blocking writes
run on, and the checksummed slot its small headers are written in.

A :class:`~backing.threads.Lane` is one thread of a record (a pair file has two: header
and bitmap pages; a group split record one): its writes and syncs run there in order,
never on the event loop and never queued behind data I/O on the loop's shared executor
(chunk copies, a target's flush), and a call runs to its end even when its caller is
cancelled.

A slot is ``magic, seq u64, length u32, crc32 u32, JSON``, padded to a fixed size; two
of them alternate by sequence number, so a torn write leaves the previous one in force.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from backing.threads import Lane

SLOT_HEAD = struct.Struct(">8sQII")


def encode_slot(magic: bytes, seq: int, value: Any, size: int, what: str) -> bytes:
    """``value`` as JSON in a slot of ``size`` bytes; ValueError if it does not fit."""
    body = json.dumps(value, sort_keys=True).encode()
    if len(body) > size - SLOT_HEAD.size:
        raise ValueError(f"{what} too large")
    slot = SLOT_HEAD.pack(magic, seq, len(body), zlib.crc32(body)) + body
    return slot.ljust(size, b"\0")


def decode_slot(magic: bytes, raw: bytes) -> tuple[int, Any] | None:
    """``(seq, value)`` of a valid slot, None for a torn, empty or foreign one."""
    if len(raw) < SLOT_HEAD.size:
        return None
    found, seq, length, crc = SLOT_HEAD.unpack_from(raw)
    body = raw[SLOT_HEAD.size : SLOT_HEAD.size + length]
    if found != magic or len(body) != length or zlib.crc32(body) != crc:
        return None
    try:
        return seq, json.loads(body)
    except ValueError:
        return None


__all__ = ["SLOT_HEAD", "Lane", "decode_slot", "encode_slot"]
