"""Growing an RBD LUN online (docs/rbd.md, "Growing an RBD LUN"): the image is grown with
Ceph's own ``rbd resize``, and every gateway that serves it grows the LUN to the image's
size when librbd tells it the header changed, and tells its hosts (CAPACITY DATA HAS
CHANGED), on a real one-OSD cluster; a reload finds it grown already. A shrunk image is
reported by the reload, not followed."""

from __future__ import annotations

import time
from pathlib import Path

from ceph_fixtures import ImageFactory, export_image, rbd_lun_toml, target_toml
from cluster import CephCluster
from conftest import DaemonFactory
from gateways import IQN as GATEWAY_IQN
from gateways import PairFactory, gateway_pair
from pair_scsi import (
    CAPACITY_DATA_HAS_CHANGED,
    LBA_OUT_OF_RANGE,
    READ_CAPACITY_16,
    TUR,
    BlockClient,
    read16,
    write16,
)

IQN = "iqn.2026-11.org.targetd:rbd"
MiB = 1 << 20


def last_lba(client: BlockClient) -> int:
    return int.from_bytes(client.ok(READ_CAPACITY_16, read=32)[:8], "big")


def told_within(client: BlockClient, seconds: float) -> None:
    """TEST UNIT READY until the nexus gets CAPACITY DATA HAS CHANGED (once), GOOD before."""
    deadline = time.monotonic() + seconds
    while True:
        status, _, sense = client.run(TUR)
        if status == 2:
            assert sense == CAPACITY_DATA_HAS_CHANGED
            assert client.run(TUR)[0] == 0  # once
            return
        assert status == 0
        assert time.monotonic() < deadline, "the LUN did not grow with its image"
        time.sleep(0.05)


def test_an_image_grown_by_rbd_resize_grows_the_lun_at_once(
    ceph_cluster: CephCluster,
    new_image: ImageFactory,
    targetd_factory: DaemonFactory,
    tmp_path: Path,
) -> None:
    image = new_image("16M")
    daemon = targetd_factory(target_toml(rbd_lun_toml(ceph_cluster, image)))
    client = BlockClient(daemon.port, IQN, luns=(0,))
    old_end = 16 * MiB // 512
    data = bytes(range(256)) * 16  # 8 blocks
    status, _, sense = client.run(write16(old_end, 8), data=data)
    assert (status, sense) == (2, LBA_OUT_OF_RANGE)

    ceph_cluster.rbd("resize", "--size", "48M", f"{ceph_cluster.pool}/{image}")
    told_within(client, 10.0)
    assert last_lba(client) == 48 * MiB // 512 - 1
    assert 'event="lun grown with its image"' in daemon.stderr
    assert daemon.targetctl_json("status")["luns"][0]["size"] == 48 * MiB
    # No reload was needed, and one now finds nothing to grow.
    assert daemon.targetctl_json("reload") == {"applied": [], "refused": []}
    client.ok(write16(old_end, 8), data=data)
    assert client.ok(read16(old_end, 8), read=len(data)) == data
    client.close()
    exported = export_image(ceph_cluster, image, tmp_path / "image.raw")
    assert exported[old_end * 512 : old_end * 512 + len(data)] == data

    # Shrunk behind the daemon's back: reported, not followed (the hosts would lose data).
    ceph_cluster.rbd("resize", "--allow-shrink", "--size", "32M", f"{ceph_cluster.pool}/{image}")
    assert daemon.targetctl_json("reload")["refused"] == [
        f"target {IQN}: lun 0: its image shrank to 33554432 bytes: still 50331648 bytes"
        " (the hosts' data past the image's end is gone)"
    ]


def test_both_gateways_grow_the_lun_when_the_image_grows(
    new_image: ImageFactory, gateway_pair: PairFactory
) -> None:
    image = new_image("16M")
    pair = gateway_pair(image)
    clients = [BlockClient(g.port, GATEWAY_IQN, luns=(0,)) for g in pair.gateways]
    pair.cluster.rbd("resize", "--size", "32M", f"{pair.cluster.pool}/{image}")
    for client in clients:  # neither gateway reloaded
        told_within(client, 10.0)
        assert last_lba(client) == 32 * MiB // 512 - 1
    for client in clients:
        client.close()
