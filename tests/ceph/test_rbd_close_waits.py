"""An RBD image closes only once the blocking librbd calls running on its worker threads
have ended (docs/rbd.md, "A close waits for the calls on worker threads"): a split
snapshot's removal, an allocation read, a lock call. One closed under them would hand
librbd a freed image (a crash of the daemon). A call that hangs past the close's bound is
named in the log, and the image closes when it ends; a call asked for after the close is
refused with ESHUTDOWN."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from ctypes import c_void_p
from functools import partial

import pytest
from ceph_fixtures import ImageFactory
from cluster import CephCluster
from slow_calls import SlowCall

from backing.rbd_allocation import Allocation
from backing.rbd_image import RbdImage, RbdSpec


class _SlowCallsImage(RbdImage):
    """An image whose allocation reads and snapshot removals, once ``slow`` is set, are
    :class:`SlowCall`\\ s, and which notes a close that comes while one is still running
    (the slowed call then leaves librbd alone: the real one would use a freed image)."""

    def __init__(self, spec: RbdSpec, delay: float = 1.0) -> None:
        self.slow = False
        self.call = SlowCall(delay)
        self.closed_under_a_call = False
        super().__init__(spec)

    def _guarded(self, real: partial[int] | partial[None]) -> int:
        if self._image:
            return int(real() or 0)
        self.closed_under_a_call = True
        return 0

    def _read_allocation(self, image: c_void_p, into: Allocation) -> None:
        real = partial(super()._read_allocation, image, into)
        if not self.slow:
            return real()
        self.call.run(partial(self._guarded, real))
        return None

    def _remove_snapshot(self, image: c_void_p, name: str) -> int:
        real = partial(super()._remove_snapshot, image, name)
        if not self.slow:
            return real()
        return self.call.run(partial(self._guarded, real))


def _spec(cluster: CephCluster, name: str) -> RbdSpec:
    return RbdSpec(pool=cluster.pool, image=name, ceph_conf=str(cluster.conf))


def test_aclose_waits_for_an_allocation_read_on_its_worker_thread(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    spec = _spec(ceph_cluster, new_image("8M"))

    async def scenario() -> tuple[bool, bool, bool]:
        image = _SlowCallsImage(spec)
        try:
            await image.write(0, b"x" * 4096)
            image.slow = True
            reading = asyncio.create_task(image.reload_allocation())
            ended_at_close = await image.call.interrupt(image.aclose)
            await asyncio.wait_for(reading, 30)
            return ended_at_close, image.closed_under_a_call, bool(image._image)
        finally:
            image.close()

    ended_at_close, under, still_open = asyncio.run(scenario())
    assert ended_at_close, "aclose returned while the allocation read still ran"
    assert not under, "the image was closed under a running librbd call"
    assert not still_open


def test_close_from_the_event_loop_waits_for_a_split_snapshot_removal(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    """The blocking ``close`` (a daemon's stop, a LUN removed by a reload) called on the
    event loop's thread while a pair's split snapshot is removed on a worker thread:
    it returns once the removal has ended, and the snapshot is gone."""
    name = new_image("8M")
    spec = _spec(ceph_cluster, name)

    async def scenario() -> tuple[bool, bool]:
        image = _SlowCallsImage(spec)
        frozen = await image.freeze("split-1")
        image.slow = True
        thawing = asyncio.create_task(image.thaw(frozen, "split-1"))
        await asyncio.to_thread(image.call.started.wait, 30)
        image.close()  # blocking, on the loop's thread: the removal runs on without it
        ended_at_close = image.call.ended.is_set()
        image.call.ended.wait(30)
        await asyncio.wait_for(thawing, 30)
        return ended_at_close, image.closed_under_a_call

    ended_at_close, under = asyncio.run(scenario())
    assert ended_at_close, "close returned while the snapshot removal still ran"
    assert not under, "the image was closed under a running librbd call"
    assert "split-1" not in ceph_cluster.rbd("snap", "ls", f"{ceph_cluster.pool}/{name}")


CLOSE_WAIT = 0.5
HUNG_CALL = 3.0


def test_a_call_that_hangs_past_the_bound_is_logged_and_the_image_closes_after_it(
    ceph_cluster: CephCluster, new_image: ImageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    spec = _spec(ceph_cluster, new_image("8M"))

    async def scenario() -> tuple[float, bool, bool, bool]:
        image = _SlowCallsImage(spec, HUNG_CALL)
        image.close_wait = CLOSE_WAIT
        image.slow = True
        reading = asyncio.create_task(image.reload_allocation())
        await asyncio.to_thread(image.call.started.wait, 30)
        began = time.monotonic()
        await image.aclose()
        took = time.monotonic() - began
        open_after_close = bool(image._image)
        await asyncio.wait_for(reading, 30)
        deadline = time.monotonic() + 10
        while image._image and time.monotonic() < deadline:  # closed by the call's thread
            await asyncio.sleep(0.02)
        return took, open_after_close, image.closed_under_a_call, bool(image._image)

    with caplog.at_level(logging.ERROR, logger="targetd.rbd"):
        took, open_after_close, under, open_at_end = asyncio.run(scenario())
    assert took < HUNG_CALL - 1.0, f"the close waited {took:.1f} s for a hung call"
    assert open_after_close  # left for the call to end
    assert not under, "the image was closed under a running librbd call"
    assert not open_at_end, "the image was not closed once the call ended"
    messages = [r.getMessage() for r in caplog.records if r.name == "targetd.rbd"]
    assert any("still running" in m and "diff_iterate" in m for m in messages), messages


def test_a_call_asked_for_after_the_close_is_refused(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    spec = _spec(ceph_cluster, new_image("8M"))

    async def scenario() -> int | None:
        image = RbdImage(spec)
        await image.aclose()
        try:
            await image.lock_owners()
        except OSError as exc:
            return exc.errno
        return None

    assert asyncio.run(scenario()) == errno.ESHUTDOWN
