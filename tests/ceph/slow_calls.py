"""A librbd call made half a second slower, for tests that cancel or stop in the middle
of one: the delay runs on the store's worker thread, before librbd's own call. And the lock
gate those tests stop or fence meanwhile, over one image with no daemon around it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from backing.rbd_image import RbdImage
from scsi.block_device import BlockDevice
from scsi.logical_unit import Identity
from targetd.gateway import Layout, LockGate

T = TypeVar("T")


class SlowCall:
    """``started`` is set as the call begins (the moment to cancel or stop), ``ended``
    once librbd's call has returned or raised (never close the image before it)."""

    def __init__(self, delay: float = 0.5) -> None:
        self.delay = delay
        self.started = threading.Event()
        self.ended = threading.Event()

    def run(self, call: Callable[[], T]) -> T:
        self.started.set()
        time.sleep(self.delay)
        try:
            return call()
        finally:
            self.ended.set()

    async def interrupt(self, how: Callable[[], Awaitable[object]]) -> bool:
        """Once the call has started, ``await how()`` (a cancel, a close): whether the call
        had ended by the time that returned. Returns only after the call has ended (the
        image may then be closed)."""
        await asyncio.to_thread(self.started.wait, 30)
        await how()
        ended = self.ended.is_set()
        await asyncio.to_thread(self.ended.wait, 30)
        return ended


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end cancelled (it must not swallow the cancel)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return
    raise AssertionError(f"{task!r} ended without being cancelled")


def lock_gate(image: RbdImage, name: str, *, takeover_ms: int) -> LockGate:
    """The lock gate a gateway (port group 1, its peer group 2) keeps over ``image``."""
    return LockGate(
        BlockDevice(Identity(name), image),
        image,
        Layout(own_group=1, own_ports=(1,), peer_group=2, peer_ports=(2,)),
        hold_ms=100,
        takeover_ms=takeover_ms,
        name=name,
    )
