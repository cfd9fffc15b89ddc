"""A pair split whose source is an RBD image reads the split set from an RBD snapshot, and
host writes to the source skip copy-before-write: the split image is still exact, across
a restart (or a kill -9 of the daemon) in the middle of the reflection, and the snapshot
goes once the pair is SPLIT or deleted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from ctypes import c_void_p
from functools import partial
from pathlib import Path

from ceph_fixtures import ImageFactory, export_image, rbd_lun_toml, target_toml
from cluster import CephCluster
from conftest import DaemonFactory
from pair_scsi import DELETE, SPLIT, BlockClient, pair_out
from slow_calls import SlowCall

from backing.pairs import Pair, PairManager, PairSettings, PairVolume, VolumeState
from backing.rbd_image import RbdImage, RbdSpec

IQN = "iqn.2026-11.org.targetd:rbd"
MiB = 1 << 20
SIZE = 8 * MiB
CHUNK = 64 * 1024


def snapshots(cluster: CephCluster, image: str) -> list[str]:
    out = cluster.rbd("snap", "ls", f"{cluster.pool}/{image}")
    return [line.split()[1] for line in out.splitlines()[1:] if line.split()]


@contextlib.asynccontextmanager
async def rbd_pair_manager(
    cluster: CephCluster,
    images: tuple[str, str],
    state: Path,
    *,
    copy_rate: int = 0,
    source: type[RbdImage] = RbdImage,
    before_close: Callable[[RbdImage], object] = lambda src: None,
) -> AsyncIterator[tuple[PairManager, RbdImage]]:
    """A pair manager in ``state`` with the two images as volumes b/src and b/tgt (the
    source opened as ``source``): (the manager, the source image). At the end the manager
    stops, ``before_close(source image)`` runs, and both images close."""
    conf = str(cluster.conf)
    src = source(RbdSpec(pool=cluster.pool, image=images[0], ceph_conf=conf))
    tgt = RbdImage(RbdSpec(pool=cluster.pool, image=images[1], ceph_conf=conf))
    manager = PairManager(state, PairSettings(chunk_size=CHUNK, copy_rate=copy_rate))
    manager.register_volume(PairVolume("b/src", src))
    manager.register_volume(PairVolume("b/tgt", tgt))
    try:
        yield manager, src
    finally:
        await manager.stop()
        before_close(src)
        src.close()
        tgt.close()


async def split_from_a_snapshot(manager: PairManager, name: str = "p") -> Pair:
    """Split the pair and wait until its split snapshot is open."""
    await manager.split(name)
    pair = manager.get(name)
    for _ in range(200):
        if pair._frozen is not None:
            break
        await asyncio.sleep(0.05)
    return pair


def test_split_set_from_a_snapshot_is_exact_across_a_restart(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    rng = random.Random(7)
    images = new_image("8M"), new_image("8M")
    src_name, tgt_name = images
    at_split = bytearray(rng.randbytes(SIZE))
    after = bytearray(at_split)

    async def split_and_write() -> tuple[str, int, bytes]:
        # The background copy crawls (1 byte/s): the whole volume stays the split set.
        async with rbd_pair_manager(ceph_cluster, images, tmp_path, copy_rate=1) as (manager, _):
            vsrc, vtgt = manager.volumes["b/src"], manager.volumes["b/tgt"]
            await vsrc.write(0, at_split)
            await manager.create("p", "b/src", "b/tgt")
            pair = await split_from_a_snapshot(manager)
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

    snap, copied, merged = asyncio.run(split_and_write())
    assert copied == 0
    assert merged == at_split
    assert snapshots(ceph_cluster, src_name) == [snap]

    async def resume_and_finish() -> None:
        async with rbd_pair_manager(ceph_cluster, images, tmp_path) as (manager, _):
            await manager.start()  # reopens the snapshot named in the pair file
            await manager.wait("p", VolumeState.SPLIT, timeout=120)
            pair = manager.get("p")
            for _ in range(200):  # the snapshot is removed after the split completes
                if pair.split_snapshot is None:
                    break
                await asyncio.sleep(0.05)
            assert pair.split_snapshot is None

    asyncio.run(resume_and_finish())
    assert export_image(ceph_cluster, tgt_name, tmp_path / "tgt.img") == at_split
    assert export_image(ceph_cluster, src_name, tmp_path / "src.img") == after
    assert snapshots(ceph_cluster, src_name) == []


def test_deleting_a_split_pending_pair_removes_its_snapshot(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    images = new_image("8M"), new_image("8M")

    async def scenario() -> str | None:
        async with rbd_pair_manager(ceph_cluster, images, tmp_path, copy_rate=1) as (manager, _):
            await manager.volumes["b/src"].write(0, bytes(range(256)) * 4096)
            await manager.create("p", "b/src", "b/tgt")
            name = (await split_from_a_snapshot(manager)).split_snapshot
            await manager.delete("p")
            return name

    assert asyncio.run(scenario()) is not None
    assert snapshots(ceph_cluster, images[0]) == []


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

    def __init__(self, spec: RbdSpec) -> None:
        super().__init__(spec)
        self.freezing = asyncio.Event()

    async def freeze(self, name: str) -> RbdImage:
        self.freezing.set()
        return await super().freeze(name)


def test_a_stop_while_the_snapshot_is_taken_leaves_no_snapshot(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    images = new_image("8M"), new_image("8M")

    async def scenario() -> None:
        async with rbd_pair_manager(
            ceph_cluster, images, tmp_path, copy_rate=1, source=_SignalledImage
        ) as (manager, src):
            assert isinstance(src, _SignalledImage)
            await manager.volumes["b/src"].write(0, bytes(range(256)) * 4096)
            await manager.create("p", "b/src", "b/tgt")
            await manager.split("p")
            await asyncio.wait_for(src.freezing.wait(), 30)
            # librbd takes a snapshot in 80-100 ms here: the stop lands while it is taken.

    asyncio.run(scenario())
    assert snapshots(ceph_cluster, images[0]) == []


def test_a_stray_split_snapshot_is_removed_when_the_pair_starts(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    """What a kill -9 between taking a snapshot and naming it in the pair file leaves: a
    split snapshot that no pair names. The next start removes it, and only it."""
    images = new_image("8M"), new_image("8M")
    src_name = images[0]

    async def run(create: bool) -> None:
        async with rbd_pair_manager(ceph_cluster, images, tmp_path) as (manager, _):
            if create:
                await manager.create("p", "b/src", "b/tgt")
            else:
                await manager.start()
            await manager.wait("p", VolumeState.DUPLEX, timeout=120)

    asyncio.run(run(create=True))
    for name in ("targetd-split-17f0e1d2c3b4a596", "kept-by-the-user"):
        ceph_cluster.rbd("snap", "create", f"{ceph_cluster.pool}/{src_name}@{name}")
    asyncio.run(run(create=False))
    assert snapshots(ceph_cluster, src_name) == ["kept-by-the-user"]


class _SlowRemovalImage(RbdImage):
    """An image whose snapshot removals are a :class:`SlowCall`."""

    def __init__(self, spec: RbdSpec) -> None:
        super().__init__(spec)
        self.removal = SlowCall()

    def _remove_snapshot(self, image: c_void_p, name: str) -> int:
        return self.removal.run(partial(super()._remove_snapshot, image, name))


def test_a_stop_while_the_snapshot_is_removed_waits_for_the_removal(
    ceph_cluster: CephCluster, new_image: ImageFactory, tmp_path: Path
) -> None:
    """A resync removes the split snapshot in the background; a stop in the middle
    returns only once the removal has ended (the caller closes the image next: a removal
    still running on its thread would use a closed image), and the next start forgets
    the snapshot's name."""
    images = new_image("8M"), new_image("8M")
    removing_at_stop: list[bool] = []

    def at_stop(src: RbdImage) -> None:
        assert isinstance(src, _SlowRemovalImage)
        removing_at_stop.append(not src.removal.ended.is_set())
        src.removal.ended.wait(30)  # never close the image under a removal (a crash)

    async def scenario() -> str | None:
        async with rbd_pair_manager(
            ceph_cluster, images, tmp_path, copy_rate=1, source=_SlowRemovalImage,
            before_close=at_stop,
        ) as (manager, src):  # fmt: skip
            assert isinstance(src, _SlowRemovalImage)
            await manager.volumes["b/src"].write(0, bytes(range(256)) * 4096)
            await manager.create("p", "b/src", "b/tgt")
            name = (await split_from_a_snapshot(manager)).split_snapshot
            await manager.resync("p")
            await asyncio.to_thread(src.removal.started.wait, 30)
        return name

    assert asyncio.run(scenario()) is not None
    assert removing_at_stop == [False]
    assert snapshots(ceph_cluster, images[0]) == []

    async def restart() -> str | None:
        async with rbd_pair_manager(ceph_cluster, images, tmp_path) as (manager, _):
            await manager.start()
            await manager.wait("p", VolumeState.DUPLEX, timeout=120)
            pair = manager.get("p")
            await asyncio.gather(*pair._snapshot_tasks)
            return pair.split_snapshot

    assert asyncio.run(restart()) is None
    assert snapshots(ceph_cluster, images[0]) == []
