"""The decoding of librados's notify reply (backing/rbd_notify.py), on bytes laid out as
librados lays them out: the gateways' liveness decision reads it (docs/rbd.md)."""

from __future__ import annotations

import json
import struct

from backing.rbd_notify import decode_notify_reply


def reply(acks: list[bytes], timeouts: int) -> bytes:
    out = struct.pack("<I", len(acks))
    for n, payload in enumerate(acks):
        out += struct.pack("<QQI", 4100 + n, 0x5600_0000 + n, len(payload)) + payload
    out += struct.pack("<I", timeouts)
    out += b"".join(struct.pack("<QQ", 5000 + n, n) for n in range(timeouts))
    return out


def test_replies_are_the_json_answers_and_silent_watchers_are_counted() -> None:
    busy = {"addr": "127.0.0.1:0/1", "answer": "busy", "wait": 0.2}
    result = decode_notify_reply(reply([json.dumps(busy).encode(), b""], timeouts=1))
    assert result.replies == [busy]  # the empty acknowledgement (a non-holder) is no reply
    assert result.timed_out == 1


def test_foreign_payloads_are_ignored() -> None:
    result = decode_notify_reply(reply([b"pong", b"[1, 2]", b'{"answer": "released"}'], 0))
    assert result.replies == [{"answer": "released"}]
    assert result.timed_out == 0
