"""Messages between the gateways of one RBD image: RADOS watch/notify on an object of its own.

Every gateway that serves an image watches ``targetd.gateway.<image id>`` in the image's
pool (and namespace). A notify reaches every watcher, and returns when all have acknowledged
it or ``timeout`` has passed; each acknowledgement carries a reply. That round trip is the
gateways' liveness signal: a live gateway answers in milliseconds, a dead or frozen one
(kill -9, SIGSTOP, a lost network) does not answer at all, long before the OSDs expire its
watch (``osd_client_watch_timeout``, 30 s by default).

Messages and replies are small JSON objects. librados calls the watch callback on its own
thread; the message is handed to the event loop, which answers it (``reply``) when it has
decided, from the loop. Nothing here knows what the messages mean (targetd/gateway.py).

Each gateway names its client of the image in the object, in an xattr of its own
(``targetd.gateway.<port group>``: its client id and address), written once per client (not
at each renewal of its watch). That client's watch of the image header lives on after a
kill -9 until the OSDs expire it (``osd_client_watch_timeout``), and librbd's notifications
of the image (the lock's release at close, 5 s each) wait for it until then: once a
takeover proved the other gateway dead, its client of every image is blocklisted, if silent
(``ChannelFence``, scsi/watch_fence.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import logging
import struct
from collections.abc import Callable
from ctypes import byref, c_size_t, c_uint64, c_void_p
from dataclasses import dataclass, field
from typing import Any

from backing.rados_object import notify_watchers
from backing.rbd_image import RbdImage
from backing.rbd_lib import WATCH_CALLBACK, WATCH_ERROR_CALLBACK, check, lib

log = logging.getLogger("targetd.rbd")

Message = dict[str, Any]
Reply = Callable[[Message], None]
# (message, reply): the receiver must call reply exactly once.
OnMessage = Callable[[Message, Reply], None]
OnError = Callable[[int], None]

XATTR_PREFIX = b"targetd.gateway."


@dataclass
class NotifyResult:
    """What a notify brought back: the replies of the watchers that answered (each a
    message) and how many watchers did not answer in time."""

    replies: list[Message] = field(default_factory=list)
    timed_out: int = 0


def decode_notify_reply(raw: bytes) -> NotifyResult:
    """librados's notify reply: ``map<(gid, cookie), bufferlist>`` of acknowledgements then
    ``set<(gid, cookie)>`` of watchers that timed out, little-endian Ceph encoding."""
    result = NotifyResult()
    (count,) = struct.unpack_from("<I", raw, 0)
    pos = 4
    for _ in range(count):
        _gid, _cookie, length = struct.unpack_from("<QQI", raw, pos)
        pos += 20
        payload = raw[pos : pos + length]
        pos += length
        if payload:
            try:
                message = json.loads(payload)
            except ValueError:
                continue  # not one of ours
            if isinstance(message, dict):
                result.replies.append(message)
    if pos + 4 <= len(raw):
        (result.timed_out,) = struct.unpack_from("<I", raw, pos)
    return result


class GatewayChannel:
    """One gateway's end of an image's message object."""

    def __init__(
        self, image: RbdImage, on_message: OnMessage, on_error: OnError, me: str = ""
    ) -> None:
        self.image = image
        self.on_message = on_message
        self.on_error = on_error
        self.me = me  # this gateway's name in the object (its port group)
        self.oid = b""
        self._announced = ""  # the client address last named in the object
        self._cookie = c_uint64(0)
        self._ioctx = c_void_p()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch_cb = WATCH_CALLBACK(self._on_notify)
        self._error_cb = WATCH_ERROR_CALLBACK(self._on_watch_error)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Name this gateway's client in the object (creating it) if not done yet, and
        watch it (blocking). A renewal of the watch writes nothing: with the cluster out of
        reach, each write waited out ``osd_op_timeout`` before the watch was even tried."""
        self._loop = loop
        self._ioctx = self.image.ioctx
        self.oid = f"targetd.gateway.{self.image.image_id}".encode()
        address = self.image.address
        if self._announced != address:
            self._announce(address)
        ret = self._watch()
        if ret == -errno.ENOENT:  # removed meanwhile: a notify needs it to exist
            self._announce(address)
            ret = self._watch()
        check(ret, "watching the gateway object")

    def _watch(self) -> int:
        return int(
            lib().rados_watch3(
                self._ioctx, self.oid, byref(self._cookie), self._watch_cb, self._error_cb, 0, None
            )
        )

    def _announce(self, address: str) -> None:
        """Name this gateway's client (id and address) in its xattr of the object; setting
        it creates the object if needed."""
        record = json.dumps({"client": self.image.instance_id, "address": address}).encode()
        check(
            lib().rados_setxattr(
                self._ioctx, self.oid, XATTR_PREFIX + self.me.encode(), record, len(record)
            ),
            "naming this gateway in the gateway object",
        )
        self._announced = address

    def named(self, gateway: str) -> dict[str, Any] | None:
        """The client the object names for ``gateway`` (blocking); None if it names none."""
        buf = ctypes.create_string_buffer(512)
        ret = lib().rados_getxattr(self._ioctx, self.oid, XATTR_PREFIX + gateway.encode(),
                                   buf, len(buf))  # fmt: skip
        if ret in (-errno.ENODATA, -errno.ENOENT):
            return None
        check(ret, "reading the gateway object")
        record = json.loads(buf.raw[:ret])
        return record if isinstance(record, dict) else None

    def probe(self, payload: bytes, timeout: float) -> tuple[list[int], list[int]]:
        """Notify every watcher (blocking); the client ids of those that answered and of
        those silent for ``timeout`` seconds."""
        reply = c_void_p()
        length = c_size_t()
        ret = lib().rados_notify2(self._ioctx, self.oid, payload, len(payload),
                                  int(timeout * 1000), byref(reply), byref(length))  # fmt: skip
        try:
            raw = ctypes.string_at(reply, length.value) if reply else b""
        finally:
            if reply:
                lib().rados_buffer_free(reply)
        if ret < 0 and not raw:
            check(ret, "probing the gateway object's watchers")
        return notify_watchers(raw)

    def stop(self) -> None:
        """Stop watching (blocking); a fenced client's unwatch fails, which is fine."""
        if self._cookie.value:
            lib().rados_unwatch2(self._ioctx, self._cookie)
            self._cookie = c_uint64(0)

    async def notify(self, message: Message, timeout: float) -> NotifyResult:
        """Send ``message`` to every gateway (this one too: it answers with nothing) and
        collect their replies; watchers silent for ``timeout`` seconds are counted."""
        data = json.dumps(message).encode()
        ioctx, oid = self._ioctx, self.oid

        def send() -> NotifyResult:
            reply = c_void_p()
            length = c_size_t()
            ret = lib().rados_notify2(
                ioctx, oid, data, len(data), int(timeout * 1000), byref(reply), byref(length)
            )
            try:
                raw = ctypes.string_at(reply, length.value) if reply else b""
            finally:
                if reply:
                    lib().rados_buffer_free(reply)
            if ret < 0 and not raw:  # ETIMEDOUT still brings the replies that came
                check(ret, "rados_notify2")
            return decode_notify_reply(raw) if raw else NotifyResult()

        # A cancel (the gateway stopping) waits for the notify to end: the io context it
        # uses closes with the image next. Counted as a call on the image: a reopen (after
        # a fence) waits for it before it destroys that io context.
        return await self.image.run_blocking(send)

    # -- librados's threads ------------------------------------------------------------
    def _on_notify(
        self, _arg: int | None, notify_id: int, cookie: int, _notifier: int, data: int | None,
        length: int,
    ) -> None:  # fmt: skip
        raw = ctypes.string_at(data, length) if data and length else b""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._ack(notify_id, cookie, {})
            return
        loop.call_soon_threadsafe(self._deliver, notify_id, cookie, raw)

    def _on_watch_error(self, _arg: int | None, cookie: int, err: int) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._error, cookie, err)

    # -- the event loop ----------------------------------------------------------------
    # A message or error of a watch that has since been stopped is dropped: its io context
    # may be gone (the image was reopened), and nobody waits for its answer any more.
    def _error(self, cookie: int, err: int) -> None:
        if cookie == self._cookie.value:
            self.on_error(err)

    def _deliver(self, notify_id: int, cookie: int, raw: bytes) -> None:
        if cookie != self._cookie.value:
            return
        try:
            message = json.loads(raw) if raw else {}
        except ValueError:
            message = {}
        if not isinstance(message, dict) or message.get("from") == self.image.address:
            self._ack(notify_id, cookie, {})
            return
        answered = False

        def reply(answer: Message) -> None:
            nonlocal answered
            if not answered:
                answered = True
                self._ack(notify_id, cookie, answer)

        try:
            self.on_message(message, reply)
        except Exception:
            log.exception("gateway message %r", message)
            reply({})

    def _ack(self, notify_id: int, cookie: int, answer: Message) -> None:
        if cookie != self._cookie.value:
            return
        data = json.dumps(answer).encode() if answer else b""
        lib().rados_notify_ack(self._ioctx, self.oid, notify_id, cookie, data, len(data))


class ChannelFence:
    """A gateway object as scsi/watch_fence.py fences it: the other gateway's client of
    the image, as the object names it, blocklisted if its watch is silent."""

    def __init__(self, channel: GatewayChannel, peer: str) -> None:
        self.channel = channel
        self.peer = peer
        self.name = channel.oid.decode()
        self.instance_id = channel.image.instance_id

    def read(self) -> tuple[int, bytes]:
        named = self.channel.named(self.peer) or {}
        record = {"gateways": {self.peer: named.get("client")},
                  "addresses": {self.peer: named.get("address")}}  # fmt: skip
        return 0, json.dumps(record).encode()

    def probe(self, payload: bytes, timeout: float) -> tuple[list[int], list[int]]:
        return self.channel.probe(payload, timeout)

    def blocklist(self, address: str) -> None:
        self.channel.image.blocklist(address)
