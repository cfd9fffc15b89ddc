"""A gateway that finds itself fenced reopens its image only once every librbd call on
the old handle has ended (docs/rbd.md, "Takeover and fencing"): however long a call from
before the fence runs, the image is never closed under it, and nothing of the old handle
is used after the reopen. Meanwhile the host's commands get NOT READY, transitioning."""

from __future__ import annotations

import asyncio
import errno
import time
from ctypes import c_void_p
from functools import partial

from ceph_fixtures import ImageFactory, ceph_cluster, new_image
from cluster import CephCluster
from slow_calls import SlowCall

from backing.errors import MediumWriteError
from backing.rbd_image import RbdImage, RbdSpec
from scsi.block_device import BlockDevice
from scsi.command import Nexus
from scsi.logical_unit import Identity
from scsi.sense import CheckCondition, Reason
from targetd.gateway import BROADCAST_TIMEOUT, Layout, LockGate

__all__ = ["ceph_cluster", "new_image"]

TAKEOVER_MS = 200
# Longer than the recovery ever waited for the gateway's tasks (takeover + broadcast + 1 s).
SLOW_CALL = TAKEOVER_MS / 1000 + BROADCAST_TIMEOUT + 1.0 + 1.5


class _WatchedImage(RbdImage):
    """An image whose lock acquisitions are a slow call, and which notes a close (or
    reopen) that comes while such a call is still running on the old handle; the call
    then leaves librbd alone (the real one would use a closed handle: a crash)."""

    def __init__(self, spec: RbdSpec) -> None:
        self.lock_call = SlowCall(SLOW_CALL)
        self.closed_under_a_call = False
        super().__init__(spec)

    def _take_lock(self, image: c_void_p) -> None:
        take = partial(super()._take_lock, image)
        self.lock_call.run(lambda: None if self.closed_under_a_call else take())

    def _teardown(self) -> None:
        call = self.lock_call
        if call.started.is_set() and not call.ended.is_set():
            self.closed_under_a_call = True
        super()._teardown()


WRITE_10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])


def test_a_fenced_gateway_reopens_only_after_the_old_handles_calls_end(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    name = new_image("8M")
    spec = RbdSpec(pool=ceph_cluster.pool, image=name, ceph_conf=str(ceph_cluster.conf))

    async def scenario() -> tuple[bool, float, Reason | None, bool, bool]:
        image = _WatchedImage(spec)
        gate = LockGate(
            BlockDevice(Identity("gate-fence"), image),
            image,
            Layout(own_group=1, own_ports=(1,), peer_group=2, peer_ports=(2,)),
            hold_ms=100,
            takeover_ms=TAKEOVER_MS,
            name="gate-fence",
        )
        try:
            taking = asyncio.create_task(gate.take("pair"))
            await asyncio.to_thread(image.lock_call.started.wait, 30)
            gate.fenced(MediumWriteError(errno.ESHUTDOWN, image.path, "write", 0, 512))
            began = time.monotonic()
            reason = None
            try:
                await asyncio.wait_for(gate.enter(Nexus("i", "t"), WRITE_10), 5)
            except CheckCondition as cc:
                reason = cc.reason
            answered = time.monotonic() - began
            while gate.is_fenced:
                await asyncio.sleep(0.05)
            call_ended = image.lock_call.ended.wait(0)
            taken = await asyncio.wait_for(taking, 30)
            return image.closed_under_a_call, answered, reason, call_ended, taken
        finally:
            await gate.stop()
            image.close()

    under, answered, reason, call_ended, taken = asyncio.run(scenario())
    assert not under, "the image was reopened while a librbd call on the old handle ran"
    assert call_ended
    assert reason is Reason.LU_NOT_ACCESSIBLE_TRANSITIONING
    assert answered < 1.0, f"a host command waited {answered:.1f} s"
    assert not taken  # the fence ended the acquisition: not taken on the old client
