"""A caller cancelled during one of the RBD store's blocking librbd calls (a gateway
stopping, a takeover timing out) returns only once the call has ended on its worker
thread, and leaves nothing of it behind: a cancelled lock acquisition gives the lock back
(docs/rbd.md, "Moving the lock")."""

from __future__ import annotations

import asyncio
import threading
import time
from ctypes import c_void_p

import pytest
from ceph_fixtures import ImageFactory, ceph_cluster, new_image
from cluster import CephCluster

from backing.rbd_image import RbdImage, RbdSpec

__all__ = ["ceph_cluster", "new_image"]


class _SlowLockImage(RbdImage):
    """An image whose lock acquisitions take half a second longer (on the worker thread,
    before librbd's own), and that notes when the last one ended."""

    def __init__(self, spec: RbdSpec) -> None:
        super().__init__(spec)
        self.taking = threading.Event()
        self.taken = threading.Event()

    def _take_lock(self, image: c_void_p) -> None:
        self.taking.set()
        time.sleep(0.5)
        try:
            super()._take_lock(image)
        finally:
            self.taken.set()


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
            await asyncio.to_thread(slow.taking.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            ended_at_cancel = slow.taken.is_set()
            slow.taken.wait(30)  # never close the image under a lock acquisition (a crash)
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
