"""A pair split whose source is an RBD image reads the split set from an RBD snapshot, and
host writes to the source skip copy-before-write: the split image is still exact, across
a restart (or a kill -9 of the daemon) in the middle of the reflection, and the snapshot
goes once the pair is SPLIT or deleted."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from ctypes import c_void_p
from pathlib import Path

from ceph_fixtures import (
    ImageFactory,
    ceph_cluster,
    export_image,
    new_image,
    rbd_lun_toml,
    target_toml,
)
from cluster import CephCluster
from conftest import DaemonFactory
from pair_scsi import DELETE, SPLIT, BlockClient, pair_out

from backing.pairs import PairManager, PairSettings, PairVolume, VolumeState
from backing.rbd_image import RbdImage, RbdSpec

__all__ = ["ceph_cluster", "new_image"]

IQN = "iqn.2026-11.org.targetd:rbd"
MiB = 1 << 20
SIZE = 8 * MiB
CHUNK = 64 * 1024


def snapshots(cluster: CephCluster, image: str) -> list[str]:
    out = cluster.rbd("snap", "ls", f"{cluster.pool}/{image}")
    return [line.split()[1] for line in out.splitlines()[1:] if line.split()]


def test_split_set_from_a_snapshot_is_exact_across_a_restart(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    rng = random.Random(7)
    src_name, tgt_name = new_image("8M"), new_image("8M")
    conf = str(ceph_cluster.conf)
    at_split = bytearray(rng.randbytes(SIZE))
    after = bytearray(at_split)

    def volumes() -> tuple[RbdImage, RbdImage, PairVolume, PairVolume]:
        src = RbdImage(RbdSpec(pool=ceph_cluster.pool, image=src_name, ceph_conf=conf))
        tgt = RbdImage(RbdSpec(pool=ceph_cluster.pool, image=tgt_name, ceph_conf=conf))
        return src, tgt, PairVolume("b/src", src), PairVolume("b/tgt", tgt)

    async def split_and_write() -> tuple[str, int, bytes]:
        src, tgt, vsrc, vtgt = volumes()
        # The background copy crawls (1 byte/s): the whole volume stays the split set.
        manager = PairManager(tmp_path, PairSettings(chunk_size=CHUNK, copy_rate=1))
        manager.register_volume(vsrc)
        manager.register_volume(vtgt)
        try:
            await vsrc.write(0, at_split)
            await manager.create("p", "b/src", "b/tgt")
            await manager.split("p")
            pair = manager.get("p")
            for _ in range(200):  # until the snapshot is open
                if pair._frozen is not None:
                    break
                await asyncio.sleep(0.05)
            assert pair.split_snapshot is not None and pair._frozen is not None
            for _ in range(40):  # host writes all over the split set
                off = rng.randrange(SIZE // 512 - 64) * 512
                data = rng.randbytes(rng.randrange(1, 64) * 512)
                await vsrc.write(off, data)
                after[off : off + len(data)] = data
            copied = pair.copied_bytes  # 0: no write copied its chunk first
            merged = bytearray(SIZE)
            await vtgt.read_into(0, memoryview(merged))  # the split image, read through
            return pair.split_snapshot, copied, bytes(merged)
        finally:
            await manager.stop()
            src.close()
            tgt.close()

    snap, copied, merged = asyncio.run(split_and_write())
    assert copied == 0
    assert merged == at_split
    assert snapshots(ceph_cluster, src_name) == [snap]

    async def resume_and_finish() -> None:
        src, tgt, vsrc, vtgt = volumes()
        manager = PairManager(tmp_path, PairSettings(chunk_size=CHUNK))
        manager.register_volume(vsrc)
        manager.register_volume(vtgt)
        try:
            await manager.start()  # reopens the snapshot named in the pair file
            await manager.wait("p", VolumeState.SPLIT, timeout=120)
            pair = manager.get("p")
            for _ in range(200):  # the snapshot is removed after the split completes
                if pair.split_snapshot is None:
                    break
                await asyncio.sleep(0.05)
            assert pair.split_snapshot is None
        finally:
            await manager.stop()
            src.close()
            tgt.close()

    asyncio.run(resume_and_finish())
    assert export_image(ceph_cluster, tgt_name, tmp_path / "tgt.img") == at_split
    assert export_image(ceph_cluster, src_name, tmp_path / "src.img") == after
    assert snapshots(ceph_cluster, src_name) == []


def test_deleting_a_split_pending_pair_removes_its_snapshot(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    src_name, tgt_name = new_image("8M"), new_image("8M")
    conf = str(ceph_cluster.conf)

    async def scenario() -> str | None:
        src = RbdImage(RbdSpec(pool=ceph_cluster.pool, image=src_name, ceph_conf=conf))
        tgt = RbdImage(RbdSpec(pool=ceph_cluster.pool, image=tgt_name, ceph_conf=conf))
        manager = PairManager(tmp_path, PairSettings(chunk_size=CHUNK, copy_rate=1))
        manager.register_volume(PairVolume("b/src", src))
        manager.register_volume(PairVolume("b/tgt", tgt))
        try:
            await manager.volumes["b/src"].write(0, bytes(range(256)) * 4096)
            await manager.create("p", "b/src", "b/tgt")
            await manager.split("p")
            pair = manager.get("p")
            for _ in range(200):
                if pair._frozen is not None:
                    break
                await asyncio.sleep(0.05)
            name = pair.split_snapshot
            await manager.delete("p")
            return name
        finally:
            await manager.stop()
            src.close()
            tgt.close()

    assert asyncio.run(scenario()) is not None
    assert snapshots(ceph_cluster, src_name) == []


def test_kill9_while_the_split_set_is_read_from_the_snapshot(
    ceph_cluster: CephCluster,
    new_image: ImageFactory,
    targetd_factory: DaemonFactory,
) -> None:
    rng = random.Random(11)
    image_a, image_b = new_image(create=False), new_image(create=False)
    # The background copy crawls (64 KiB/s over 8 MiB): the split stays SPLIT-PENDING.
    toml = '[pairs]\nchunk_size = "64KiB"\ncopy_rate = "64KiB"\n\n' + target_toml(
        rbd_lun_toml(ceph_cluster, image_a, lun=0, create_size="8MiB"),
        rbd_lun_toml(ceph_cluster, image_b, lun=1, create_size="8MiB"),
        iqn=IQN,
    )
    daemon = targetd_factory(toml)
    client = BlockClient(daemon.port, IQN, luns=(0, 1))
    model = bytearray(rng.randbytes(SIZE))
    client.write(0, 0, bytes(model))
    client.create(0, 1, b"vol")
    split_image = bytes(model)
    client.ok(pair_out(SPLIT, 1), lun=0)
    for _ in range(100):  # the snapshot is taken just after the split
        if snapshots(ceph_cluster, image_a):
            break
        time.sleep(0.1)
    assert len(snapshots(ceph_cluster, image_a)) == 1
    time.sleep(0.5)  # its name in the pair file, its view open: writes skip the copy
    for _ in range(30):
        blocks = rng.randrange(1, 65)
        off = rng.randrange(SIZE // 512 - blocks) * 512
        data = rng.randbytes(blocks * 512)
        client.write(0, off, data)
        model[off : off + len(data)] = data
    assert client.status(lun=0).target == "SPLIT-PENDING"
    client.close()
    os.kill(daemon.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    daemon.proc.wait()  # type: ignore[union-attr]
    daemon.start()
    client = BlockClient(daemon.port, IQN, luns=(0, 1))
    assert client.status(lun=0).target == "SPLIT-PENDING"
    assert client.read(1, 0, SIZE) == split_image  # from the snapshot, reopened
    assert client.read(0, 0, SIZE) == bytes(model)
    client.ok(pair_out(DELETE), lun=0)
    client.close()
    assert snapshots(ceph_cluster, image_a) == []


class _SignalledImage(RbdImage):
    """An image that says when a split snapshot starts being taken (``freezing``)."""

    freezing: asyncio.Event

    async def freeze(self, name: str) -> RbdImage:
        self.freezing.set()
        return await super().freeze(name)


def test_a_stop_while_the_snapshot_is_taken_leaves_no_snapshot(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    src_name, tgt_name = new_image("8M"), new_image("8M")
    conf = str(ceph_cluster.conf)

    async def scenario() -> None:
        src = _SignalledImage(RbdSpec(pool=ceph_cluster.pool, image=src_name, ceph_conf=conf))
        src.freezing = asyncio.Event()
        tgt = RbdImage(RbdSpec(pool=ceph_cluster.pool, image=tgt_name, ceph_conf=conf))
        manager = PairManager(tmp_path, PairSettings(chunk_size=CHUNK, copy_rate=1))
        manager.register_volume(PairVolume("b/src", src))
        manager.register_volume(PairVolume("b/tgt", tgt))
        try:
            await manager.volumes["b/src"].write(0, bytes(range(256)) * 4096)
            await manager.create("p", "b/src", "b/tgt")
            await manager.split("p")
            await asyncio.wait_for(src.freezing.wait(), 30)
            # librbd takes a snapshot in 80-100 ms here: the stop lands while it is taken.
        finally:
            await manager.stop()
            src.close()
            tgt.close()

    asyncio.run(scenario())
    assert snapshots(ceph_cluster, src_name) == []


def test_a_stray_split_snapshot_is_removed_when_the_pair_starts(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    """What a kill -9 between taking a snapshot and naming it in the pair file leaves: a
    split snapshot that no pair names. The next start removes it, and only it."""
    src_name, tgt_name = new_image("8M"), new_image("8M")
    conf = str(ceph_cluster.conf)

    async def run(create: bool) -> None:
        src = RbdImage(RbdSpec(pool=ceph_cluster.pool, image=src_name, ceph_conf=conf))
        tgt = RbdImage(RbdSpec(pool=ceph_cluster.pool, image=tgt_name, ceph_conf=conf))
        manager = PairManager(tmp_path, PairSettings(chunk_size=CHUNK))
        manager.register_volume(PairVolume("b/src", src))
        manager.register_volume(PairVolume("b/tgt", tgt))
        try:
            if create:
                await manager.create("p", "b/src", "b/tgt")
            else:
                await manager.start()
            await manager.wait("p", VolumeState.DUPLEX, timeout=120)
        finally:
            await manager.stop()
            src.close()
            tgt.close()

    asyncio.run(run(create=True))
    for name in ("targetd-split-17f0e1d2c3b4a596", "kept-by-the-user"):
        ceph_cluster.rbd("snap", "create", f"{ceph_cluster.pool}/{src_name}@{name}")
    asyncio.run(run(create=False))
    assert snapshots(ceph_cluster, src_name) == ["kept-by-the-user"]


class _SlowRemovalImage(RbdImage):
    """An image whose snapshot removals take half a second longer (on the worker thread,
    before librbd's own), and that notes when the last one ended."""

    def __init__(self, spec: RbdSpec) -> None:
        super().__init__(spec)
        self.removing = threading.Event()
        self.removed = threading.Event()

    def _remove_snapshot(self, image: c_void_p, name: str) -> int:
        self.removing.set()
        time.sleep(0.5)
        try:
            return super()._remove_snapshot(image, name)
        finally:
            self.removed.set()


def test_a_stop_while_the_snapshot_is_removed_waits_for_the_removal(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    """A resync removes the split snapshot in the background; a stop in the middle
    returns only once the removal has ended (the caller closes the image next: a removal
    still running on its thread would use a closed image), and the next start forgets
    the snapshot's name."""
    src_name, tgt_name = new_image("8M"), new_image("8M")
    conf = str(ceph_cluster.conf)

    async def scenario() -> tuple[str | None, bool]:
        src = _SlowRemovalImage(RbdSpec(pool=ceph_cluster.pool, image=src_name, ceph_conf=conf))
        tgt = RbdImage(RbdSpec(pool=ceph_cluster.pool, image=tgt_name, ceph_conf=conf))
        manager = PairManager(tmp_path, PairSettings(chunk_size=CHUNK, copy_rate=1))
        manager.register_volume(PairVolume("b/src", src))
        manager.register_volume(PairVolume("b/tgt", tgt))
        removing_at_stop = False
        try:
            await manager.volumes["b/src"].write(0, bytes(range(256)) * 4096)
            await manager.create("p", "b/src", "b/tgt")
            await manager.split("p")
            pair = manager.get("p")
            for _ in range(200):
                if pair._frozen is not None:
                    break
                await asyncio.sleep(0.05)
            name = pair.split_snapshot
            await manager.resync("p")
            await asyncio.to_thread(src.removing.wait, 30)
        finally:
            await manager.stop()
            removing_at_stop = not src.removed.is_set()
            src.removed.wait(30)  # never close the image under a removal (a crash)
            src.close()
            tgt.close()
        return name, removing_at_stop

    name, removing_at_stop = asyncio.run(scenario())
    assert name is not None
    assert not removing_at_stop
    assert snapshots(ceph_cluster, src_name) == []

    async def restart() -> str | None:
        src = RbdImage(RbdSpec(pool=ceph_cluster.pool, image=src_name, ceph_conf=conf))
        tgt = RbdImage(RbdSpec(pool=ceph_cluster.pool, image=tgt_name, ceph_conf=conf))
        manager = PairManager(tmp_path, PairSettings(chunk_size=CHUNK))
        manager.register_volume(PairVolume("b/src", src))
        manager.register_volume(PairVolume("b/tgt", tgt))
        try:
            await manager.start()
            await manager.wait("p", VolumeState.DUPLEX, timeout=120)
            pair = manager.get("p")
            await asyncio.gather(*pair._snapshot_tasks)
            return pair.split_snapshot
        finally:
            await manager.stop()
            src.close()
            tgt.close()

    assert asyncio.run(restart()) is None
    assert snapshots(ceph_cluster, src_name) == []
