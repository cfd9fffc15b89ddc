"""A caller cancelled during one of the RBD store's blocking librbd calls (a gateway
stopping, a takeover timing out) returns only once the call has ended on its worker
thread, and leaves nothing of it behind: a cancelled lock acquisition gives the lock back
(docs/rbd.md, "A cancelled lock call ends first"), and a cancelled reopen leaves the image
open as the new client. A call on a worker thread asks about the image open when it was
called. A gateway stopped while it takes the lock stops only once that call has ended,
within a bound of the call's own length."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from ctypes import c_void_p
from functools import partial
from typing import Any

import pytest
from ceph_fixtures import ImageFactory
from cluster import CephCluster
from slow_calls import SlowCall, cancel, lock_gate

from backing.rbd_image import RbdImage, RbdSpec


class _SlowLockImage(RbdImage):
    """An image whose lock acquisitions are a :class:`SlowCall` of ``delay`` seconds."""

    def __init__(self, spec: RbdSpec, delay: float = 0.5) -> None:
        super().__init__(spec)
        self.lock_call = SlowCall(delay)

    def _take_lock(self, image: c_void_p) -> None:
        self.lock_call.run(partial(super()._take_lock, image))


def test_a_cancelled_lock_acquisition_waits_for_librbd_and_gives_the_lock_back(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    name = new_image("8M")
    spec = RbdSpec(pool=ceph_cluster.pool, image=name, ceph_conf=str(ceph_cluster.conf))

    async def scenario() -> tuple[bool, list[str], list[str], str]:
        slow = _SlowLockImage(spec)
        other = RbdImage(spec)
        try:
            task = asyncio.create_task(slow.acquire_lock())
            ended_at_cancel = await slow.lock_call.interrupt(partial(cancel, task))
            owners_after = await slow.lock_owners()
            try:
                await asyncio.wait_for(other.acquire_lock(), 30)
            except OSError as err:  # EROFS: the cancelled acquisition kept the lock
                return ended_at_cancel, owners_after, [f"not taken: {err}"], other.address
            return ended_at_cancel, owners_after, await other.lock_owners(), other.address
        finally:
            slow.close()
            other.close()

    ended_at_cancel, owners_after, owners_then, other_address = asyncio.run(scenario())
    assert ended_at_cancel
    assert owners_after == []
    assert owners_then == [other_address]


class _SlowOpenImage(RbdImage):
    """An image whose opens, once ``slow`` is set, are a :class:`SlowCall`."""

    def __init__(self, spec: RbdSpec) -> None:
        self.slow = False
        self.open_call = SlowCall()
        super().__init__(spec)

    def _open(self) -> None:
        if not self.slow:
            return super()._open()
        self.open_call.run(super()._open)


def test_a_cancelled_reopen_waits_for_librbd_and_leaves_the_image_open(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    name = new_image("8M")
    spec = RbdSpec(pool=ceph_cluster.pool, image=name, ceph_conf=str(ceph_cluster.conf))

    async def scenario() -> tuple[bool, bytes]:
        image = _SlowOpenImage(spec)
        try:
            await image.write(0, b"before" * 512)
            image.slow = True
            task = asyncio.create_task(image.reopen())
            opened_at_cancel = await image.open_call.interrupt(partial(cancel, task))
            if not opened_at_cancel:
                return False, b""
            await image.write(4096, b"after!" * 512)
            buf = bytearray(2 * 3072 + 1024)
            await image.read_into(0, memoryview(buf))
            return True, bytes(buf)
        finally:
            image.close()

    opened_at_cancel, data = asyncio.run(scenario())
    assert opened_at_cancel
    assert data[:3072] == b"before" * 512
    assert data[4096 : 4096 + 3072] == b"after!" * 512


class _HeldExecutor(ThreadPoolExecutor):
    """An executor whose jobs start only once ``go`` is set (``queued``: one was given)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.queued = threading.Event()
        self.go = threading.Event()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.queued.set()

        def held() -> Any:
            self.go.wait(30)
            return fn(*args, **kwargs)

        return super().submit(held)


def test_lock_owners_asks_about_the_image_open_when_it_was_called(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    """Like every call that runs on a worker thread, ``lock_owners`` takes the image handle
    when it is called: the handle the object holds by the time the thread runs (a reopen
    may have replaced it) is not the one asked about."""
    unlocked_spec = RbdSpec(ceph_cluster.pool, new_image("8M"), ceph_conf=str(ceph_cluster.conf))
    locked_spec = RbdSpec(ceph_cluster.pool, new_image("8M"), ceph_conf=str(ceph_cluster.conf))

    async def scenario() -> tuple[list[str], list[str]]:
        unlocked, locked = RbdImage(unlocked_spec), RbdImage(locked_spec)
        try:
            await locked.acquire_lock()
            asked = await unlocked.lock_owners()
            executor = _HeldExecutor()
            asyncio.get_running_loop().set_default_executor(executor)
            task = asyncio.create_task(unlocked.lock_owners())
            while not executor.queued.is_set():  # (to_thread would wait in the held executor)
                await asyncio.sleep(0.001)
            own = unlocked._image
            unlocked._image = locked._image  # what a reopen would do, while the job waits
            try:
                executor.go.set()
                asked_then = await task
            finally:
                unlocked._image = own
            return asked, asked_then
        finally:
            unlocked.close()
            locked.close()

    asked, asked_then = asyncio.run(scenario())
    assert asked == []
    assert asked_then == []  # not the other image's owner (the locked one's address)


# A stop waits for the lock call in flight (slowed to SLOW_CALL seconds) and no longer: the
# bound is generous (a loaded machine), but far below what a stop that hung on the call's
# retries or on a takeover's deadline would take.
SLOW_CALL = 1.0
STOP_BOUND = 10.0


def test_a_gateway_stopped_while_it_takes_the_lock_ends_after_the_call_within_a_bound(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    """A host write (here the pair's ``take``) makes the gateway take the lock; the daemon
    stops while librbd takes it (slowed on its worker thread). The stop returns once the
    call has ended (the image may then be closed: no librbd call of the gateway is still
    running), within STOP_BOUND, with the lock given back."""
    name = new_image("8M")
    spec = RbdSpec(pool=ceph_cluster.pool, image=name, ceph_conf=str(ceph_cluster.conf))

    async def scenario() -> tuple[bool, float, list[str], str]:
        image = _SlowLockImage(spec, SLOW_CALL)
        gate = lock_gate(image, "gate-stop", takeover_ms=2000)
        other = RbdImage(spec)
        try:
            taking = asyncio.create_task(gate.take("pair"))
            await asyncio.to_thread(image.lock_call.started.wait, 30)
            began = time.monotonic()
            await gate.stop()
            took = time.monotonic() - began
            ended = image.lock_call.ended.is_set()
            image.lock_call.ended.wait(30)  # never close the image under a lock call (a crash)
            await asyncio.wait_for(taking, 30)  # ended too (False: not taken)
            await asyncio.wait_for(other.acquire_lock(), 30)  # free: the stop gave it back
            return ended, took, await other.lock_owners(), other.address
        finally:
            gate.close()
            image.close()
            other.close()

    ended, took, owners, other_address = asyncio.run(scenario())
    assert ended, "the stop returned while librbd was still taking the lock"
    assert took < STOP_BOUND, f"the stop took {took:.1f} s"
    assert owners == [other_address]


def test_a_gateway_stopped_while_it_watches_again_ends_after_the_watch_call(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    """The gateway's watch of its message object is lost and it watches again (a blocking
    RADOS call, slowed on its worker thread); the daemon stops meanwhile. The stop returns
    only once that call has ended: the watch it makes is then stopped with the gateway, and
    never runs on against the io context the image's close destroys next."""
    name = new_image("8M")
    spec = RbdSpec(pool=ceph_cluster.pool, image=name, ceph_conf=str(ceph_cluster.conf))

    async def scenario() -> tuple[bool, float]:
        image = RbdImage(spec)
        gate = lock_gate(image, "gate-rewatch", takeover_ms=2000)
        call = SlowCall(SLOW_CALL)
        stopped = False
        start = gate.channel.start

        def slow_start(loop: asyncio.AbstractEventLoop) -> None:
            # After the stop has returned the real call would watch on a closed client.
            call.run(lambda: None if stopped else start(loop))

        gate.channel.start = slow_start  # type: ignore[method-assign]
        try:
            gate._on_watch_error(-107)  # ENOTCONN: the OSD dropped the watch
            await asyncio.to_thread(call.started.wait, 30)
            began = time.monotonic()
            await gate.stop()
            took = time.monotonic() - began
            ended = call.ended.is_set()
            stopped = True
            call.ended.wait(30)
            return ended, took
        finally:
            gate.close()
            image.close()

    ended, took = asyncio.run(scenario())
    assert ended, "the stop returned while the gateway was still watching again"
    assert took < STOP_BOUND, f"the stop took {took:.1f} s"
