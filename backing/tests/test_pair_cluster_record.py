"""The pair record in the cluster (backing/pairs/cluster.py): header and bitmaps read back
as written, and once another gateway claimed it, every write of the old one is refused and
changes nothing. The object is a dictionary with the same guarded writes as RADOS's
``cmpxattr`` operations (the Ceph tier runs the real one: tests/ceph/test_rbd_gateway_pairs.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from backing.pairs import Phase
from backing.pairs.bitmap import PAGE_BITS, PAGE_BYTES
from backing.pairs.cluster import ClusterPairFile, RecordTaken


class MemoryObject:
    """One RADOS object: a body and xattrs, each operation all or nothing."""

    name = "rbd/targetd.pair.t"

    def __init__(self) -> None:
        self.body: bytearray | None = None
        self.xattrs: dict[bytes, bytes] = {}
        self.closed = False

    def xattr(self, name: bytes) -> bytes | None:
        return None if self.body is None else self.xattrs.get(name)

    def size(self) -> int | None:
        return None if self.body is None else len(self.body)

    def read_at(self, offset: int, length: int) -> bytes:
        assert self.body is not None
        return bytes(self.body[offset : offset + length])

    def write_guarded(self, guard, writes, xattrs=None, *, create=False):  # type: ignore[no-untyped-def]
        if create and self.body is not None:
            return False
        if not create and self.body is None:
            return False
        if guard is not None and self.xattrs.get(guard[0]) != guard[1]:
            return False
        if self.body is None:
            self.body = bytearray()
        for offset, data in writes:
            if len(self.body) < offset + len(data):
                self.body.extend(bytes(offset + len(data) - len(self.body)))
            self.body[offset : offset + len(data)] = data
        self.xattrs.update(xattrs or {})
        return True

    def remove_guarded(self, guard):  # type: ignore[no-untyped-def]
        if self.body is None:
            return True
        if self.xattrs.get(guard[0]) != guard[1]:
            return False
        self.body, self.xattrs = None, {}
        return True

    def close(self, wait: float | None = None) -> None:
        self.closed = True


async def _granted(why: str) -> bool:
    return True


def two_gateways(
    tmp_path: Path, *, locks: bool = False
) -> tuple[Any, Any, dict[str, MemoryObject]]:
    """Two gateways' pair services (A, B) on four volumes whose records are the same
    objects (the cluster); with ``locks``, each gateway gets a volume's lock at once."""
    from backing.pairs import PairManager, PairService, PairSettings, PairVolume
    from backing.sparse_file import SparseFile

    objects = {f"t/lun{i}": MemoryObject() for i in range(4)}

    def gateway(name: str) -> PairService:
        service = PairService(PairManager(tmp_path / name, PairSettings(chunk_size=1 << 16)))
        for i in range(4):
            path = tmp_path / f"{name}{i}.img"
            volume = PairVolume(f"t/lun{i}", SparseFile(path, 1 << 20))
            volume.record_object = lambda o=objects[volume.volume_id]: o
            if locks:
                volume.take_lock = _granted
            service.register_volume(volume)
        return service

    return gateway("a"), gateway("b"), objects


META = {"name": "p", "source": "t/lun0", "target": "t/lun1", "size": 1 << 30,
        "chunk_size": 1 << 16, "chunks": 2 * PAGE_BITS, "npages": 2, "phase": "DUPLEX"}  # fmt: skip


def test_the_record_reads_back_as_written_and_a_claim_refuses_the_old_writer() -> None:
    async def scenario() -> None:
        obj = MemoryObject()
        a = ClusterPairFile.create(obj, META, 2)
        page = bytearray(PAGE_BYTES)
        page[0] = 0b101
        await a.commit_pages([(0, 1, bytes(page)), (2, 0, bytes(page))])
        await a.commit_header({**META, "phase": "RESYNC"})
        shown = ClusterPairFile.load(obj, claim=False)
        assert shown is not None
        _, meta, bitmaps = shown
        assert meta["phase"] == "RESYNC"
        assert list(bitmaps[0]) == [PAGE_BITS, PAGE_BITS + 2]
        assert list(bitmaps[1]) == [] and list(bitmaps[2]) == [0, 2]
        # B claims it: A's next writes are refused and change nothing.
        claimed = ClusterPairFile.load(obj, claim=True)
        assert claimed is not None
        b = claimed[0]
        told: list[str] = []
        a.on_taken = lambda: told.append("taken")
        before = bytes(obj.body or b"")
        with pytest.raises(RecordTaken):
            await a.commit_pages([(0, 0, bytes(page))])
        with pytest.raises(RecordTaken):
            await a.commit_header({**META, "phase": "SUSPENDED"})
        assert bytes(obj.body or b"") == before and told == ["taken", "taken"] and a.taken
        with pytest.raises(RecordTaken):
            a.remove()
        # B writes on, and deletes it.
        await b.commit_header({**META, "phase": "DUPLEX"})
        again = ClusterPairFile.load(obj, claim=False)
        assert again is not None and again[1]["phase"] == "DUPLEX"
        await b.discard()
        assert ClusterPairFile.load(obj, claim=False) is None

    asyncio.run(scenario())


def test_a_second_record_is_refused() -> None:
    obj = MemoryObject()
    ClusterPairFile.create(obj, META, 2)
    with pytest.raises(FileExistsError):
        ClusterPairFile.create(obj, META, 2)


def test_a_group_split_of_shared_pairs_is_answered_once_every_record_says_split(
    tmp_path: Path,
) -> None:
    """With two gateways the other one reads the members' records, not this gateway's
    split record: the group split waits for them (a gateway dying right after the
    answer leaves every record split)."""
    from backing.pairs import UNCHECKED, PairManager, PairService, PairSettings, PairVolume
    from backing.pairs.cluster import _decode_header
    from backing.sparse_file import SparseFile

    size = 1 << 20

    async def scenario() -> None:
        service = PairService(PairManager(tmp_path, PairSettings(chunk_size=1 << 16)))
        objects: dict[str, MemoryObject] = {}
        for i in range(4):
            volume = PairVolume(f"t/lun{i}", SparseFile(tmp_path / f"lun{i}.img", size))
            objects[volume.volume_id] = MemoryObject()
            volume.record_object = lambda o=objects[volume.volume_id]: o
            service.register_volume(volume)
        await service.create("a", "t/lun0", "t/lun1", access=UNCHECKED)
        await service.create("b", "t/lun2", "t/lun3", access=UNCHECKED)
        await service.create_group("db", "t", ["a", "b"], access=UNCHECKED)
        await service.split(name="a", scope="t", access=UNCHECKED)
        for target in ("t/lun1", "t/lun3"):
            meta = _decode_header(objects[target].read_at(0, 4096), target)
            assert meta["phase"] in ("SPLIT_PENDING", "SPLIT") and meta["group_split"], meta
        await service.stop()

    asyncio.run(scenario())


def test_a_deletion_cut_short_is_finished_by_the_gateway_that_takes_the_pair(
    tmp_path: Path,
) -> None:
    from backing.pairs import PairManager, PairSettings, PairVolume
    from backing.sparse_file import SparseFile

    async def scenario() -> None:
        manager = PairManager(tmp_path, PairSettings(chunk_size=1 << 16))
        obj = MemoryObject()
        vols = [PairVolume(f"t/lun{i}", SparseFile(tmp_path / f"{i}.img", 1 << 20)) for i in (0, 1)]
        other = MemoryObject()  # the source's own (a pair whose target it were)
        vols[0].record_object = lambda: other
        vols[1].record_object = lambda: obj
        for volume in vols:
            manager.register_volume(volume)
        meta = {**META, "size": 1 << 20, "chunks": 16, "npages": 1, "phase": "DELETE"}
        ClusterPairFile.create(obj, meta, 1)  # what the dead gateway left
        await manager.start()
        assert manager.get("p").phase.name == "DELETE"  # shown
        await manager.shared.run_here("t/lun0")
        assert obj.body is None and manager.pairs == {}
        assert vols[0].pair is None and vols[1].pair is None
        await manager.stop()

    asyncio.run(scenario())


def test_group_membership_reaches_the_other_gateway_through_the_records(
    tmp_path: Path,
) -> None:
    """Two managers (two gateways) on the same records: a group made and changed through
    A is seen by B, whose own groups file never heard of it."""
    from backing.pairs import UNCHECKED

    a, b, _ = two_gateways(tmp_path)

    async def scenario() -> None:
        await a.start()
        await a.create("p", "t/lun0", "t/lun1", access=UNCHECKED)
        await a.create("q", "t/lun2", "t/lun3", access=UNCHECKED)
        await a.create_group("db", "t", ["p", "q"], access=UNCHECKED)
        await b.start()
        assert b.group_status("db", "t").members[0].group == "db"
        assert [s.name for s in b.group_status("db", "t").members] == ["p", "q"]
        await a.remove_from_group("db", ["q"], access=UNCHECKED, scope="t")
        await b.manager.shared.refresh()
        assert [s.name for s in b.group_status("db", "t").members] == ["p"]
        assert b.status(name="q", scope="t").group is None
        await a.stop()
        await b.stop()

    asyncio.run(scenario())


def test_a_group_split_cut_short_by_its_gateways_death_is_retried_through_the_other(
    tmp_path: Path,
) -> None:
    """Gateway A dies in the middle of a group split of shared pairs: p's record says
    split, q's does not (the split was never answered, and A's local split record is out
    of B's reach). B shows the group MIXED; the host's retried split through B rolls p
    back and splits both at one instant, as a lone daemon's restart would."""
    import time

    from backing.pairs import UNCHECKED
    from backing.pairs.cluster import _decode_header

    a, b, objects = two_gateways(tmp_path, locks=True)

    def record(target: str) -> dict[str, object]:
        return _decode_header(objects[target].read_at(0, 4096), target)

    async def scenario() -> None:
        await a.start()
        await a.create("p", "t/lun0", "t/lun1", access=UNCHECKED)
        await a.create("q", "t/lun2", "t/lun3", access=UNCHECKED)
        await a.create_group("db", "t", ["p", "q"], access=UNCHECKED)
        for name in ("p", "q"):
            await a.wait(Phase.DUPLEX.target, 5, name=name, scope="t")
        # A's group split reached p's record only, then A died.
        p = a.manager.get("p", "t")
        p.split_now(time.time(), "cut-short")
        await p.write_header()
        await a.stop()
        assert record("t/lun1")["phase"] in ("SPLIT_PENDING", "SPLIT")
        assert record("t/lun3")["phase"] == "DUPLEX"
        await b.start()
        assert b.group_status("db", "t").state == "MIXED"
        await b.split_group("db", access=UNCHECKED, scope="t")
        metas = [record("t/lun1"), record("t/lun3")]
        assert [m["phase"] for m in metas] in (
            [x, y] for x in ("SPLIT_PENDING", "SPLIT") for y in ("SPLIT_PENDING", "SPLIT")
        ), metas
        assert metas[0]["group_split"] == metas[1]["group_split"] != "cut-short"
        assert metas[0]["split_time"] == metas[1]["split_time"]
        await b.stop()

    asyncio.run(scenario())


def test_a_shared_primary_has_three_secondaries_and_the_other_gateway_runs_them_all(
    tmp_path: Path,
) -> None:
    """1:N on volumes two gateways share: three pairs of one primary, each with its record
    in the cluster; once A is gone, B (taking the primary's lock) claims and runs every
    one of them, each in its own phase; a fourth is refused."""
    from backing.pairs import UNCHECKED, PairError
    from backing.pairs.cluster import _decode_header
    from backing.pairs.states import ErrorCode

    a, b, objects = two_gateways(tmp_path, locks=True)

    async def scenario() -> None:
        await a.start()
        for name, lun in (("s1", 1), ("s2", 2), ("s3", 3)):
            await a.create(name, "t/lun0", f"t/lun{lun}", access=UNCHECKED)
        for name in ("s1", "s2", "s3"):
            await a.wait(Phase.DUPLEX.target, 5, name=name, scope="t")
        await a.split(access=UNCHECKED, name="s2", scope="t")
        await a.stop()  # A is gone
        for lun in (1, 2, 3):
            meta = _decode_header(objects[f"t/lun{lun}"].read_at(0, 4096), f"t/lun{lun}")
            assert meta["source"] == "t/lun0"
        await b.start()
        assert sorted(s.name for s in b.list_pairs("t")) == ["s1", "s2", "s3"]
        await b.manager.shared.run_here("t/lun0")
        assert b.manager.shared.running == {"t/lun1", "t/lun2", "t/lun3"}
        phases = {s.name: s.phase for s in b.list_pairs("t")}
        assert phases["s2"] in (Phase.SPLIT_PENDING, Phase.SPLIT)
        assert phases["s1"] is Phase.DUPLEX and phases["s3"] is Phase.DUPLEX
        await b.resync(access=UNCHECKED, name="s2", scope="t")
        with pytest.raises(PairError) as refused:
            await b.create("s4", "t/lun0", "t/lun3", access=UNCHECKED)
        assert refused.value.code is ErrorCode.VOLUME_IN_PAIR
        await b.stop()

    asyncio.run(scenario())
