"""Copy records in the cluster (xcopy/shared.py), on an in-memory object shared by two
"gateways" (two targets, each with its own copy manager): a copy run through one is
reported through the other; one whose gateway stopped answering is reported failed, by
both."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers_xcopy import NEXUS, cscd, extended_copy, make_target, send
from xcopy_lists import lid4, rcr_cdb, seg_b2b, seg_b2s

from scsi.command import Nexus, Status
from scsi.sense import Reason, build_sense, parse_sense
from scsi.target import ScsiTarget
from xcopy.shared import SharedCopies

_ids = itertools.count(1)
# The same initiator through the other gateway: another target port, another ISID.
VIA_B = Nexus("iqn.2026-11.org.test:ini,i,0x400000009999", "iqn.2026-11.org.test:tgt,t,0x2")
LOST = build_sense(Reason.COPY_TARGET_DEVICE_NOT_REACHABLE)


class Cluster:
    def __init__(self) -> None:
        self.version, self.body = 0, b""
        self.watchers: dict[int, Callable[[int, bytes], bytes]] = {}
        self.deaf: set[int] = set()  # watchers that no longer answer (a dead gateway)
        self.lock = threading.Lock()


class MemoryObject:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster, self.instance_id = cluster, next(_ids)
        self.name = f"mem/{self.instance_id}"

    def read(self) -> tuple[int, bytes]:
        with self.cluster.lock:
            return self.cluster.version, self.cluster.body

    def replace(self, expected: int, version: int, body: bytes) -> bool:
        with self.cluster.lock:
            if self.cluster.version != expected:
                return False
            self.cluster.version, self.cluster.body = version, body
            return True

    def ask(self, payload: bytes, timeout: float) -> list[bytes]:
        return [
            answer(self.instance_id, payload)
            for wid, answer in list(self.cluster.watchers.items())
            if wid not in self.cluster.deaf
        ]

    def watch(self, on_notify: Callable[[int, bytes], bytes], on_error: object) -> None:
        self.cluster.watchers[self.instance_id] = on_notify

    def unwatch(self) -> None:
        self.cluster.watchers.pop(self.instance_id, None)

    def close(self) -> None:
        self.unwatch()


def gateway(tmp: Path, cluster: Cluster) -> tuple[ScsiTarget, SharedCopies]:
    tmp.mkdir()
    target = make_target(tmp, blocks=8192)
    records = SharedCopies(MemoryObject(cluster), LOST)
    target.luns[0].copy_records = records  # LUN 0 stands for the RBD LU
    return target, records


def copy_list(target: ScsiTarget, list_id: int, segments: int) -> bytes:
    segs = [seg_b2b(0, 1, 512, 0, 512 * n) for n in range(segments)]  # 256 KiB each
    cscds = [cscd(target.luns[0]), cscd(target.luns[1])]
    return lid4(cscds, segs, list_id=list_id, immed=True)


def backup_list(target: ScsiTarget, list_id: int) -> bytes:
    segs = [seg_b2s(0, 1, 64 * 1024, 128, 128 * n) for n in range(8)]
    cscds = [cscd(target.luns[0]), cscd(target.luns[2], device_type=0x01)]
    return lid4(cscds, segs, list_id=list_id, immed=True)


async def status(target: ScsiTarget, list_id: int, nexus: Nexus = VIA_B) -> tuple[int, bytes]:
    result = await send(target, rcr_cdb(0x05, list_id), nexus=nexus)
    return result.status, result.data if result.status == Status.GOOD else result.sense


def test_a_copy_is_reported_through_the_other_gateway_once(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster()
        a, ra = gateway(tmp_path / "a", cluster)
        b, rb = gateway(tmp_path / "b", cluster)
        assert (await extended_copy(a, copy_list(a, 5, 2), sa=1)).status == Status.GOOD
        manager = a.luns[0].services.copy_manager
        op = manager.find(NEXUS, 5)
        await op.done.wait()
        await manager.durable(op)
        _, data = await status(b, 5)
        assert (data[5], int.from_bytes(data[16:24], "big")) == (0x01, 512 * 1024)
        code, sense = await status(b, 5)
        assert (code, parse_sense(sense)) == (Status.CHECK_CONDITION, (5, 0x24, 0x00))
        ra.close()
        rb.close()

    asyncio.run(main())


def test_a_copy_whose_gateway_stopped_answering_fails_on_both(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster()
        a, ra = gateway(tmp_path / "a", cluster)
        b, rb = gateway(tmp_path / "b", cluster)
        manager = a.luns[0].services.copy_manager
        # The tape is busy with another copy: this backup waits, running, at segment 0.
        tape = manager._tape_locks.setdefault(id(a.luns[2]), asyncio.Lock())
        await tape.acquire()
        sent = asyncio.create_task(extended_copy(a, backup_list(a, 6), sa=1))
        await asyncio.sleep(0.05)
        op = manager.find(NEXUS, 6)
        await manager.durable(op)
        _, data = await status(b, 6)
        assert data[5] == 0x12  # A answers for it: running
        cluster.deaf.add(ra.obj.instance_id)  # A stalls (its watch no longer answers)
        _, data = await status(b, 6)
        assert data[5] == 0x02 and parse_sense(data[32:]) == (0x0A, 0x0D, 0x02), data.hex()
        assert int.from_bytes(data[24:26], "big") == 0
        tape.release()
        assert (await sent).status == Status.GOOD  # IMMED: answered once it starts
        await op.done.wait()  # A, awake, finds the verdict at its next record and fails too
        _, mine = await status(a, 6, NEXUS)
        assert mine[5] == 0x02 and parse_sense(mine[32:]) == (0x0A, 0x0D, 0x02), mine.hex()
        ra.close()
        rb.close()

    asyncio.run(main())


class _GatedObject(MemoryObject):
    """An object whose writes, once ``armed``, wait for ``gate`` (a slow cluster)."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(cluster)
        self.armed = False
        self.writing, self.gate = threading.Event(), threading.Event()

    def replace(self, expected: int, version: int, body: bytes) -> bool:
        if self.armed:
            self.writing.set()
            self.gate.wait(10)
        return super().replace(expected, version, body)


def test_a_cancelled_publish_returns_once_its_write_has_landed() -> None:
    """A copy's record write cannot be stopped half way on its thread: a cancelled
    publish (the copy aborted) returns only after it, so nothing writes the object once
    the caller has moved on (to closing it, or to a newer record)."""
    cluster = Cluster()

    async def scenario() -> bool:
        obj = _GatedObject(cluster)
        records = SharedCopies(obj, LOST)
        obj.armed = True
        record = {"initiator": NEXUS.initiator_port, "list_id": 7, "state": "running"}
        task = asyncio.ensure_future(records.publish(record))
        await asyncio.to_thread(obj.writing.wait, 10)
        task.cancel()
        await asyncio.sleep(0.2)
        returned_under_write = task.done()
        obj.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        records.close()
        return returned_under_write

    assert asyncio.run(scenario()) is False
    assert b'"list_id": 7' in cluster.body
