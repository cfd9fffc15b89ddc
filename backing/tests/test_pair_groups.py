"""Consistency groups: one split instant for several pairs, all or nothing, kept across a
restart and a crash.

The model test: three sessions write one at a time to three LUNs (each session to blocks
only it writes), a group split comes at a random moment with a large backlog, the
sessions go on writing; each secondary must be an image the ordering rule allows
(``group_model.check``). Many seeds; ``-m slow`` runs many more.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest
from group_model import BLOCK, History, Write, check
from test_pair_engine import MemoryStore

from backing.pairs import (
    UNCHECKED,
    BackupPolicy,
    ErrorCode,
    PairError,
    PairManager,
    PairService,
    PairSettings,
    PairVolume,
    Phase,
    SuspendReason,
)
from backing.sparse_file import SparseFile

KiB = 1 << 10
SIZE = 1 << 20
CHUNK = 16 * KiB
LUNS = 3
SESSIONS = 3


def volumes(rng: random.Random, initial: list[bytes]) -> tuple[list[PairVolume], list[PairVolume]]:
    sources = [PairVolume(f"t/lun{i}", MemoryStore.holding(initial[i], rng)) for i in range(LUNS)]
    targets = [PairVolume(f"t/lun{LUNS + i}", MemoryStore(SIZE, rng)) for i in range(LUNS)]
    return sources, targets


async def group_of_three(
    tmp: Path, sources: list[PairVolume], targets: list[PairVolume], rate: int
) -> PairService:
    service = PairService(
        PairManager(tmp, PairSettings(chunk_size=CHUNK, copy_rate=rate, lazy_commit=0.01))
    )
    for v in (*sources, *targets):
        service.register_volume(v)
    await service.start()
    for i in range(LUNS):
        await service.create(f"p{i}", f"t/lun{i}", f"t/lun{LUNS + i}", access=UNCHECKED)
    await service.create_group("g", "t", [f"p{i}" for i in range(LUNS)], access=UNCHECKED)
    return service


async def model_run(tmp: Path, seed: int, writes_per_session: int = 40) -> list[int]:
    rng = random.Random(seed)
    initial = [rng.randbytes(SIZE) for _ in range(LUNS)]
    sources, targets = volumes(rng, initial)
    # Slow background copy: the whole volume (every chunk mapped) is the backlog.
    service = await group_of_three(tmp, sources, targets, rate=256 * KiB)
    history = History(SESSIONS)
    blocks = SIZE // BLOCK

    async def session(s: int) -> None:
        for i in range(writes_per_session):
            lun = rng.randrange(LUNS)
            block = rng.randrange(blocks // SESSIONS) * SESSIONS + s  # only s writes it
            w = Write(s, lun, block, bytes([s + 1, i % 251 + 1]) * (BLOCK // 2))
            history.writes[s].append(w)
            w.sent = history.tick()
            await sources[lun].write(block * BLOCK, w.data)
            w.acked = history.tick()
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)

    async def splitter() -> None:
        for _ in range(rng.randrange(writes_per_session * 2)):
            await asyncio.sleep(0)
        history.split_sent = history.tick()
        status = await service.split_group("g", access=UNCHECKED)
        history.split_acked = history.tick()
        assert status.state == "SPLIT-PENDING"  # the backlog is still there
        assert sum(m.dirty_chunks for m in status.members) > LUNS * SIZE // CHUNK // 2

    await asyncio.gather(splitter(), *(session(s) for s in range(SESSIONS)))
    status = service.group_status("g")
    assert len({m.split_time for m in status.members}) == 1  # one instant
    # A host reading a secondary before the reflection ends sees the same image.
    seen = []
    for t in targets:
        buf = bytearray(SIZE)
        await t.read_into(0, memoryview(buf))
        seen.append(bytes(buf))
    prefixes = check(history, initial, seen)
    for pair in service.manager.pairs.values():
        pair._pacer.rate = 0  # the backlog did its part: reflect the rest at full speed
    for name in ("p0", "p1", "p2"):
        await service.wait(Phase.SPLIT.target, 30, name=name)
    assert [bytes(t.base.data) for t in targets] == seen  # type: ignore[attr-defined]
    await service.stop()
    return prefixes


@pytest.mark.parametrize("seed", range(12))
def test_group_split_is_one_cut_in_every_hosts_write_order(tmp_path: Path, seed: int) -> None:
    prefixes = asyncio.run(model_run(tmp_path, seed))
    assert len(prefixes) == SESSIONS


@pytest.mark.slow
def test_group_split_model_many_seeds(tmp_path_factory: pytest.TempPathFactory) -> None:
    cuts = set()
    for seed in range(1000, 1300):
        cuts.add(tuple(asyncio.run(model_run(tmp_path_factory.mktemp("g"), seed, 60))))
    assert len(cuts) > 50  # the split really came at many different moments


def test_the_checker_refuses_an_image_that_breaks_dependent_write_order() -> None:
    """The checker can fail: session 1's write, sent after session 0's was acknowledged,
    is in while session 0's is not."""
    history = History(2)
    a = Write(0, 0, 0, b"\x01" * BLOCK, sent=1, acked=2)
    b = Write(1, 1, 1, b"\x02" * BLOCK, sent=3, acked=4)
    history.writes = [[a], [b]]
    history.split_sent, history.split_acked = 2, 5  # a is in flight at the split's send
    initial = [bytes(4 * BLOCK), bytes(4 * BLOCK)]
    good = [initial[0], initial[1]]
    assert check(history, initial, good) == [0, 0]
    bad = [initial[0], initial[1][:BLOCK] + b"\x02" * BLOCK + initial[1][2 * BLOCK :]]
    with pytest.raises(AssertionError, match="dependent-write"):
        check(history, initial, bad)
    history.split_sent = 3  # now a was acked before the split was sent: it must be in
    with pytest.raises(AssertionError, match="acked before the split"):
        check(history, initial, good)


def test_a_member_in_the_wrong_state_fails_the_whole_split_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        rng = random.Random(1)
        initial = [rng.randbytes(SIZE) for _ in range(LUNS)]
        sources, targets = volumes(rng, initial)
        service = await group_of_three(tmp_path, sources, targets, rate=64 * KiB)
        await service.manager.get("p1", "t").suspend(SuspendReason.OPERATOR)
        before = [(p.phase, p.split_time, p.group_split) for p in service.manager.pairs.values()]
        with pytest.raises(PairError) as err:
            await service.split_group("g", access=UNCHECKED)
        assert err.value.code is ErrorCode.WRONG_STATE
        assert "'p1'" in str(err.value)
        # Through a member too (a vendor SPLIT sent to p0's LUN splits its group).
        with pytest.raises(PairError) as err:
            await service.split(volume="t/lun0", access=UNCHECKED)
        assert err.value.code is ErrorCode.WRONG_STATE
        after = [(p.phase, p.split_time, p.group_split) for p in service.manager.pairs.values()]
        assert after == before
        # p0 keeps mirroring: a write to its source is a mirrored one.
        await sources[0].write(0, b"\x05" * BLOCK)
        assert service.status(name="p0").phase is Phase.DUPLEX_PENDING
        await service.stop()
        # On disk as well: a restart finds every pair as it was.
        again = PairService(PairManager(tmp_path, PairSettings(chunk_size=CHUNK)))
        for v in (*sources, *targets):
            v.detach()
            again.register_volume(v)
        await again.start()
        assert {p.name: p.phase for p in again.manager.pairs.values()} == {
            "p0": Phase.DUPLEX_PENDING,
            "p1": Phase.SUSPENDED,
            "p2": Phase.DUPLEX_PENDING,
        }
        assert again.group_status("g").state == "MIXED"
        await again.stop()

    asyncio.run(go())


def boot(tmp: Path) -> tuple[PairService, list[PairVolume]]:
    service = PairService(PairManager(tmp, PairSettings(chunk_size=CHUNK, lazy_commit=0.02)))
    vols = [PairVolume(f"t/lun{i}", SparseFile(tmp / f"lun{i}.img", SIZE)) for i in range(6)]
    for v in vols:
        service.register_volume(v)
    return service, vols


async def crash(service: PairService, vols: list[PairVolume]) -> None:
    """What kill -9 leaves: no final commit, no header write."""
    for pair in service.manager.pairs.values():
        for task in pair._tasks:
            task.cancel()
        await asyncio.gather(*pair._tasks, return_exceptions=True)
        os.close(pair.file.fd)
    for v in vols:
        v.close()


def test_groups_survive_a_restart_and_split_resync_by_any_member(tmp_path: Path) -> None:
    async def first() -> None:
        service, vols = boot(tmp_path)
        await service.start()
        await vols[0].write(0, b"\x01" * SIZE)
        await service.create("a", "t/lun0", "t/lun1", access=UNCHECKED)
        await service.create("b", "t/lun2", "t/lun3", access=UNCHECKED)
        await service.create_group("db", "t", ["a", "b"], access=UNCHECKED)
        with pytest.raises(PairError) as err:
            await service.create_group("db2", "t", ["b"], access=UNCHECKED)
        assert err.value.code is ErrorCode.IN_GROUP
        await service.stop()
        for v in vols:
            v.close()

    async def second() -> None:
        service, vols = boot(tmp_path)
        await service.start()
        status = service.group_status("db")
        assert [m.name for m in status.members] == ["a", "b"]
        assert service.status(name="a").group == "db"
        # A split addressed to one member splits the group at one instant.
        await service.split(name="b", access=UNCHECKED)
        a, b = service.status(name="a"), service.status(name="b")
        assert a.phase in (Phase.SPLIT_PENDING, Phase.SPLIT) and a.split_time == b.split_time
        with pytest.raises(PairError) as err:  # already split: the group's state is wrong
            await service.split_group("db", access=UNCHECKED)
        assert err.value.code is ErrorCode.WRONG_STATE
        # A split group takes no new member: it would carry another instant.
        await service.create("c", "t/lun4", "t/lun5", access=UNCHECKED)
        with pytest.raises(PairError) as err:
            await service.add_to_group("db", ["c"], access=UNCHECKED)
        assert err.value.code is ErrorCode.WRONG_STATE and "resync it" in str(err.value)
        await service.resync(volume="t/lun1", access=UNCHECKED)
        assert service.status(name="b").phase.mirroring
        assert service.group_status("db").state in ("RESYNC", "DUPLEX", "MIXED")
        # Deleting a member takes it out of the group.
        await service.delete(name="b", access=UNCHECKED)
        assert [m.name for m in service.group_status("db").members] == ["a"]
        await service.delete_group("db", access=UNCHECKED)
        assert service.list_groups() == [] and service.status(name="a").group is None
        await service.stop()
        for v in vols:
            v.close()

    asyncio.run(first())
    asyncio.run(second())
    assert not (tmp_path / "pairs" / "t" / "groups.json").exists()


def test_a_group_split_cut_short_by_a_crash_is_rolled_back(tmp_path: Path) -> None:
    """The split was never answered (only one member's header was written): after the
    restart no member is left split by it."""

    async def first() -> None:
        service, vols = boot(tmp_path)
        await service.start()
        await vols[0].write(0, b"\x01" * SIZE)
        await vols[2].write(0, b"\x02" * SIZE)
        await service.create("a", "t/lun0", "t/lun1", access=UNCHECKED)
        await service.create("b", "t/lun2", "t/lun3", access=UNCHECKED)
        await service.create_group("db", "t", ["a", "b"], access=UNCHECKED)
        a, b = service.manager.get("a", "t"), service.manager.get("b", "t")
        # b's header writes are still in flight when the crash comes, whoever starts them:
        # b's copy worker, finding b's split set copied, writes SPLIT on its own, and on a
        # loaded machine it could beat the crash (then the split is on every member's disk,
        # complete, and rightly kept).
        never = asyncio.Event()

        async def stuck(meta: dict[str, object]) -> None:
            await never.wait()

        b.file.commit_header = stuck  # type: ignore[method-assign]
        a.split_now(1.0, "x")
        b.split_now(1.0, "x")
        await a.write_header()  # b's header never reaches the disk
        await crash(service, vols)

    async def second() -> None:
        service, vols = boot(tmp_path)
        await service.start()
        assert service.status(name="a").phase.mirroring
        assert service.status(name="b").phase.mirroring
        assert service.manager.get("a", "t").group_split is None
        for name in ("a", "b"):
            await service.wait(Phase.DUPLEX.target, 30, name=name)
        assert vols[1].base.size == SIZE
        buf = bytearray(SIZE)
        await vols[1].read_into(0, memoryview(buf))
        assert buf == b"\x01" * SIZE
        # And the group splits again as one.
        await service.split_group("db", access=UNCHECKED)
        assert service.group_status("db").split_time is not None
        await service.stop()
        for v in vols:
            v.close()

    asyncio.run(first())
    asyncio.run(second())


def test_split_and_backup_and_the_split_pair_segment_split_the_whole_group(
    tmp_path: Path,
) -> None:
    """EXTENDED COPY's entry points: a backup of one member's secondary under the
    split-and-backup policy splits the group; a SPLIT PAIR segment for the next member
    (keep_split) keeps that one instant."""

    async def go() -> None:
        service, vols = boot(tmp_path)
        await service.start()
        await service.create("a", "t/lun0", "t/lun1", access=UNCHECKED)
        await service.create("b", "t/lun2", "t/lun3", access=UNCHECKED)
        await service.create_group("db", "t", ["a", "b"], access=UNCHECKED)
        image = await service.split_image("t/lun1", BackupPolicy.SPLIT_AND_BACKUP, access=UNCHECKED)
        assert image.intact()
        a, b = service.status(name="a"), service.status(name="b")
        assert b.phase in (Phase.SPLIT_PENDING, Phase.SPLIT)
        assert a.split_time == b.split_time is not None
        await service.split(volume="t/lun3", access=UNCHECKED, keep_split=True)
        assert service.status(name="b").split_time == b.split_time
        await service.stop()
        for v in vols:
            v.close()

    asyncio.run(go())
