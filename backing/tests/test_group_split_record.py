"""A group split is answered once its one record is durable (backing/pairs/group_log.py);
the members' headers follow. A crash on either side of that commit point: before it,
the split never happened; after it, every member is split at the recorded instant, its
secondary the split-instant image, whichever headers had been written. Also: a member
that only a reload brings back is checked like the ones start-up loaded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backing.pairs import (
    UNCHECKED,
    PairError,
    PairManager,
    PairService,
    PairSettings,
    PairVolume,
    Phase,
)
from backing.pairs.group_log import GroupLog
from backing.pairs.shared import SharedPairs
from backing.sparse_file import SparseFile

KiB = 1 << 10
SIZE = 1 << 20
CHUNK = 16 * KiB
OLD = (b"\x01" * SIZE, b"\x02" * SIZE)  # the sources at the split instant
NEW = b"\x0f" * (4 * CHUNK)  # written to each source after the split was answered


def boot(tmp: Path, luns: range = range(4)) -> tuple[PairService, list[PairVolume]]:
    settings = PairSettings(chunk_size=CHUNK, lazy_commit=0.02, copy_rate=64 * KiB)
    service = PairService(PairManager(tmp, settings))
    vols = [PairVolume(f"t/lun{i}", SparseFile(tmp / f"lun{i}.img", SIZE)) for i in luns]
    for v in vols:
        service.register_volume(v)
    return service, vols


async def crash(service: PairService, vols: list[PairVolume]) -> None:
    """What kill -9 leaves: no final commit, no header write, no record write."""
    for pair in service.manager.pairs.values():
        for task in [*pair._tasks, *pair._snapshot_tasks]:
            task.cancel()
        await asyncio.gather(*pair._tasks, return_exceptions=True)
        os.close(pair.file.fd)
    for task in service.manager._settling.values():
        task.cancel()
    for glog in service.manager.group_logs.values():
        os.close(glog.fd)
    for v in vols:
        v.close()


async def two_pairs(service: PairService, vols: list[PairVolume]) -> None:
    await service.start()
    await vols[0].write(0, OLD[0])
    await vols[2].write(0, OLD[1])
    await service.create("a", "t/lun0", "t/lun1", access=UNCHECKED)
    await service.create("b", "t/lun2", "t/lun3", access=UNCHECKED)
    await service.create_group("db", "t", ["a", "b"], access=UNCHECKED)


def hold_headers(service: PairService) -> None:
    """No member header reaches the disk from now on (they hang, as in a kill -9)."""
    never = asyncio.Event()

    async def stuck(meta: dict[str, object]) -> None:
        await never.wait()

    for pair in service.manager.pairs.values():
        pair.file.commit_header = stuck  # type: ignore[method-assign]


async def secondaries_hold_the_split_image(tmp: Path) -> None:
    """After the restart: both pairs split by one recorded split at one instant, and each
    secondary, once reflected, is its source as of the split."""
    service, vols = boot(tmp)
    await service.start()
    a, b = service.status(name="a"), service.status(name="b")
    assert a.phase is Phase.SPLIT_PENDING and b.phase is Phase.SPLIT_PENDING
    assert a.split_time == b.split_time is not None
    token = service.manager.get("a", "t").group_split
    assert token is not None and token == service.manager.get("b", "t").group_split
    glog = service.manager.group_logs[("t", "db")]
    assert glog.record is not None and glog.record.token == token
    assert glog.record.pending == ()  # both headers were brought up to date
    for pair in service.manager.pairs.values():
        pair._pacer.rate = 0
    for name in ("a", "b"):
        reached, _ = await service.wait(Phase.SPLIT.target, 30, name=name)
        assert reached
    for target, old in ((vols[1], OLD[0]), (vols[3], OLD[1])):
        buf = bytearray(SIZE)
        await target.read_into(0, memoryview(buf))
        assert buf == old
    # The sources kept the writes made after the split.
    buf = bytearray(len(NEW))
    await vols[0].read_into(0, memoryview(buf))
    assert buf == NEW
    await service.stop()
    for v in vols:
        v.close()


def test_a_crash_after_the_split_record_keeps_the_answered_split(tmp_path: Path) -> None:
    """The commit point: the record is durable, the split answered, no member's header
    written yet, and writes made after the split (copy-before-write for the chunks the
    split set still holds). A restart splits both members from the record."""

    async def first() -> None:
        service, vols = boot(tmp_path)
        await two_pairs(service, vols)
        hold_headers(service)
        status = await service.split_group("db", access=UNCHECKED)
        assert status.state == "SPLIT-PENDING"
        await vols[0].write(0, NEW)
        await vols[2].write(0, NEW)
        await crash(service, vols)

    asyncio.run(first())
    asyncio.run(secondaries_hold_the_split_image(tmp_path))


def test_a_crash_before_the_split_record_is_durable_leaves_no_split(tmp_path: Path) -> None:
    """The record's sync never returned: the split was not answered and nothing of it
    survives; the pairs mirror on, the secondaries catch up with the sources."""

    async def first() -> None:
        service, vols = boot(tmp_path)
        await two_pairs(service, vols)
        hold_headers(service)
        glog = service.manager.group_logs[("t", "db")]
        never = asyncio.Event()

        async def stuck(record: object) -> None:
            await never.wait()

        glog.commit = stuck  # type: ignore[method-assign]
        split = asyncio.ensure_future(service.split_group("db", access=UNCHECKED))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not split.done()
        await vols[0].write(0, NEW)
        await crash(service, vols)
        split.cancel()

    async def second() -> None:
        service, vols = boot(tmp_path)
        await service.start()
        for name in ("a", "b"):
            assert service.status(name=name).phase.mirroring
            assert service.manager.get(name, "t").group_split is None
        for pair in service.manager.pairs.values():
            pair._pacer.rate = 0
        for name in ("a", "b"):
            reached, _ = await service.wait(Phase.DUPLEX.target, 30, name=name)
            assert reached
        buf = bytearray(SIZE)
        await vols[1].read_into(0, memoryview(buf))
        assert buf == NEW + OLD[0][len(NEW) :]
        await service.stop()
        for v in vols:
            v.close()

    asyncio.run(first())
    asyncio.run(second())


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from backing.pairs import UNCHECKED
    from test_group_split_record import boot, hold_headers, two_pairs, NEW

    async def main():
        service, vols = boot(Path(sys.argv[1]))
        await two_pairs(service, vols)
        hold_headers(service)
        await service.split_group("db", access=UNCHECKED)
        await vols[0].write(0, NEW)
        await vols[2].write(0, NEW)
        print("answered", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_kill_9_at_the_commit_point_keeps_the_answered_split(tmp_path: Path) -> None:
    """The same commit point with a real SIGKILL: a process splits the group (its member
    headers held back), writes to the sources, says so, and is killed."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent.parent), str(here)])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"answered\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    asyncio.run(secondaries_hold_the_split_image(tmp_path))


def test_a_member_a_reload_brings_back_gets_the_recorded_split(tmp_path: Path) -> None:
    """The record is durable and no header has it; the restart lacks b's volumes (its
    LUNs are not configured). Both headers are brought up to date at start; b is
    loaded, split at a's instant, when the reload that adds its LUNs runs start() again."""

    async def first() -> None:
        service, vols = boot(tmp_path)
        await two_pairs(service, vols)
        hold_headers(service)
        await service.split_group("db", access=UNCHECKED)
        await crash(service, vols)

    async def second() -> None:
        service, vols = boot(tmp_path, range(2))
        await service.start()
        assert service.status(name="a").phase is Phase.SPLIT_PENDING
        with pytest.raises(PairError):  # b is not loaded: no group operation
            await service.resync_group("db", access=UNCHECKED)
        more = [PairVolume(f"t/lun{i}", SparseFile(tmp_path / f"lun{i}.img", SIZE))
                for i in (2, 3)]  # fmt: skip
        for v in more:
            service.register_volume(v)
        await service.start()  # what a reload does after adding LUNs
        a, b = service.status(name="a"), service.status(name="b")
        assert b.phase is Phase.SPLIT_PENDING and b.split_time == a.split_time
        glog = service.manager.group_logs[("t", "db")]
        await service.stop()
        for v in (*vols, *more):
            v.close()
        # And on disk: a fresh read of the record says both headers have it.
        again = GroupLog.open(glog.path)
        assert again.record is not None and again.record.pending == ()
        again.close()

    asyncio.run(first())
    asyncio.run(second())


def test_a_member_a_reload_brings_back_mirroring_rolls_back_an_unanswered_split(
    tmp_path: Path,
) -> None:
    """A split that reached a's header and was never recorded (so never answered): a
    restart without b's LUNs keeps a split (nothing to compare it with); the reload that
    brings b back, mirroring, must roll a back as start-up would have."""

    async def first() -> None:
        service, vols = boot(tmp_path)
        await two_pairs(service, vols)
        a, b = service.manager.get("a", "t"), service.manager.get("b", "t")
        hold_headers(service)
        del a.file.commit_header  # a's header writes go through again
        a.split_now(1.0, "x")
        b.split_now(1.0, "x")
        await a.write_header()
        await crash(service, vols)

    async def second() -> None:
        service, vols = boot(tmp_path, range(2))
        await service.start()
        assert service.status(name="a").phase is Phase.SPLIT_PENDING
        more = [PairVolume(f"t/lun{i}", SparseFile(tmp_path / f"lun{i}.img", SIZE))
                for i in (2, 3)]  # fmt: skip
        for v in more:
            service.register_volume(v)
        await service.start()
        for name in ("a", "b"):
            assert service.status(name=name).phase.mirroring, name
            assert service.manager.get(name, "t").group_split is None
        await service.stop()
        for v in (*vols, *more):
            v.close()

    asyncio.run(first())
    asyncio.run(second())


def test_pairs_another_gateway_resumes_carry_the_split_before_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pairs whose records are in the cluster (two gateways, backing/pairs/shared.py) are
    resumed by the other gateway, which never reads this one's split record: the split is
    answered only once every member's header has it. (The pairs here are local ones the
    manager is told are shared; the Ceph tier runs real ones.)"""

    async def go() -> None:
        service, vols = boot(tmp_path)
        await two_pairs(service, vols)
        monkeypatch.setattr(SharedPairs, "is_shared", staticmethod(lambda volume: True))
        service.manager.shared.running.update({"t/lun1", "t/lun3"})  # both run here
        b = service.manager.get("b", "t")
        gate = asyncio.Event()
        real = b.file.commit_header

        async def held(meta: dict[str, object]) -> None:
            await gate.wait()
            await real(meta)

        b.file.commit_header = held  # type: ignore[method-assign]
        split = asyncio.ensure_future(service.split_group("db", access=UNCHECKED))
        await asyncio.sleep(0.3)
        assert not split.done()  # the record is durable; b's header is not yet
        gate.set()
        status = await asyncio.wait_for(split, 10)
        assert status.state == "SPLIT-PENDING"
        monkeypatch.undo()
        await service.stop()
        for v in vols:
            v.close()

    asyncio.run(go())
