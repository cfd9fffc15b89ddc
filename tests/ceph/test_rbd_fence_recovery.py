"""A gateway that finds itself fenced reopens its image only once every librbd call on
the old handle has ended (docs/rbd.md, "Takeover and fencing"): however long a call from
before the fence runs, the image is never closed under it, and nothing of the old handle
is used after the reopen. Meanwhile the host's commands get NOT READY, transitioning."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ctypes import c_void_p
from functools import partial

import pytest
from ceph_fixtures import ImageFactory
from cluster import CephCluster
from slow_calls import SlowCall, lock_gate

from backing.errors import MediumWriteError
from backing.rbd_image import RbdImage, RbdSpec
from scsi.command import Nexus
from scsi.sense import CheckCondition, Reason
from targetd.gateway import BROADCAST_TIMEOUT, LockGate
from targetd.logs import FIELDS

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


@asynccontextmanager
async def fenced_while_taking(
    cluster: CephCluster, image_name: str, name: str, *, call: float, reopen_wait: float | None
) -> AsyncIterator[tuple[_WatchedImage, LockGate, asyncio.Task[bool]]]:
    """A gateway's lock gate whose lock acquisition (a slow call of ``call`` seconds) is
    under way when the gateway learns it is fenced; the gate, the image and the task taking
    the lock are yielded, and the gate stopped and the image closed after."""
    spec = RbdSpec(pool=cluster.pool, image=image_name, ceph_conf=str(cluster.conf))
    image = _WatchedImage(spec)
    image.lock_call.delay = call
    if reopen_wait is not None:
        image.reopen_wait = reopen_wait
    gate = lock_gate(image, name, takeover_ms=TAKEOVER_MS)
    try:
        taking = asyncio.create_task(gate.take("pair"))
        await asyncio.to_thread(image.lock_call.started.wait, 30)
        gate.fenced(MediumWriteError(errno.ESHUTDOWN, image.path, "write", 0, 512))
        yield image, gate, taking
    finally:
        await gate.stop()
        image.close()


def test_a_fenced_gateway_reopens_only_after_the_old_handles_calls_end(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    name = new_image("8M")

    async def scenario() -> tuple[bool, float, Reason | None, bool, bool]:
        async with fenced_while_taking(
            ceph_cluster, name, "gate-fence", call=SLOW_CALL, reopen_wait=None
        ) as (image, gate, taking):
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

    under, answered, reason, call_ended, taken = asyncio.run(scenario())
    assert not under, "the image was reopened while a librbd call on the old handle ran"
    assert call_ended
    assert reason is Reason.LU_NOT_ACCESSIBLE_TRANSITIONING
    assert answered < 1.0, f"a host command waited {answered:.1f} s"
    assert not taken  # the fence ended the acquisition: not taken on the old client


# The reopen gives up after REOPEN_WAIT and tries again a second later: a call hanging this
# long (counted from the fence) makes it give up at least twice.
REOPEN_WAIT = 0.5
HUNG_CALL = SLOW_CALL + 3.0


def test_a_reopen_that_waits_on_a_hung_call_gives_up_says_why_and_retries(
    ceph_cluster: CephCluster, new_image: ImageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock call from before the fence hangs: each reopen waits for it for
    ``reopen_wait`` seconds only, then the log says which call keeps the old client open
    and the gateway tries again; meanwhile the host's commands get NOT READY, 04h/0Ah. Once
    the call ends, the next try reopens (never under the call) and the gateway rejoins."""
    name = new_image("8M")

    async def scenario() -> tuple[bool, list[Reason | None], set[str], bool, bool]:
        async with fenced_while_taking(
            ceph_cluster, name, "gate-hung", call=HUNG_CALL, reopen_wait=REOPEN_WAIT
        ) as (image, gate, taking):
            reasons: list[Reason | None] = []
            shown: set[str] = set()  # what targetctl status says meanwhile
            while not image.lock_call.ended.is_set():  # the host retries meanwhile
                shown.add(str(gate.status()["recovery"]))
                try:
                    await asyncio.wait_for(gate.enter(Nexus("i", "t"), WRITE_10), 5)
                    reasons.append(None)
                except CheckCondition as cc:
                    reasons.append(cc.reason)
                await asyncio.sleep(0.25)
            deadline = time.monotonic() + 30
            while gate.is_fenced and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.wait_for(taking, 30)
            shown_after = str(gate.status()["recovery"])
            return (
                image.closed_under_a_call,
                reasons,
                shown | {shown_after},
                gate.is_fenced,
                bool(image._image),
            )

    with caplog.at_level(logging.WARNING, logger="targetd.gateway"):
        under, reasons, shown, fenced_at_end, open_at_end = asyncio.run(scenario())
    assert not under, "the image was reopened while a librbd call on the old handle ran"
    assert reasons and set(reasons) == {Reason.LU_NOT_ACCESSIBLE_TRANSITIONING}, reasons
    assert not fenced_at_end, "the gateway did not rejoin once the hung call ended"
    assert open_at_end
    assert any(
        s.startswith("reopen failed, tried again every second:") and "rbd_lock_acquire" in s
        for s in shown
    ), shown
    assert "" in shown  # once rejoined
    gave_up = [
        str(r.__dict__.get(FIELDS, {}).get("error"))
        for r in caplog.records
        if r.getMessage() == "reopen failed"
    ]
    assert len(gave_up) >= 2, gave_up
    assert all("still running" in e and "rbd_lock_acquire" in e for e in gave_up), gave_up
