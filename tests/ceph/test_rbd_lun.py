"""RBD LUNs on a real one-OSD cluster: data lands in the image, thin provisioning (UNMAP,
WRITE SAME, GET LBA STATUS), COMPARE AND WRITE, and errors that name the LUN."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from caw_counter import read_counter
from ceph_fixtures import ImageFactory, export_image, rbd_lun_toml, target_toml
from clients import run
from cluster import CephCluster
from conftest import REPO, DaemonFactory
from pair_scsi import BLOCK, BlockClient, read16, write16

from backing.rbd_image import RbdImage, RbdSpec

IQN = "iqn.2026-11.org.targetd:rbd"
MiB = 1 << 20
MISCOMPARE = 0x0E
ILLEGAL = 0x05


def get_lba_status(lba: int, alloc: int = 4096) -> bytes:
    return bytes([0x9E, 0x12]) + lba.to_bytes(8, "big") + alloc.to_bytes(4, "big") + bytes(2)


def lba_status(data: bytes) -> list[tuple[int, int, int]]:
    """(LBA, blocks, provisioning status) per descriptor: 0 mapped, 1 deallocated."""
    length = int.from_bytes(data[:4], "big")
    out = []
    for pos in range(8, 4 + length, 16):
        d = data[pos : pos + 16]
        out.append((int.from_bytes(d[:8], "big"), int.from_bytes(d[8:12], "big"), d[12] & 0xF))
    return out


def unmap(lba: int, blocks: int) -> tuple[bytes, bytes]:
    descriptor = lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(4)
    params = (6 + 16).to_bytes(2, "big") + (16).to_bytes(2, "big") + bytes(4) + descriptor
    return bytes([0x42, 0, 0, 0, 0, 0, 0]) + len(params).to_bytes(2, "big") + bytes(1), params


def caw(lba: int, blocks: int) -> bytes:
    return bytes([0x89, 0]) + lba.to_bytes(8, "big") + bytes(3) + bytes([blocks, 0, 0])


def test_qemu_io_writes_land_in_the_image(
    ceph_cluster: CephCluster,
    new_image: ImageFactory,
    targetd_factory: DaemonFactory,
    tmp_path: Path,
) -> None:
    image = new_image(create=False)
    daemon = targetd_factory(target_toml(rbd_lun_toml(ceph_cluster, image, create_size="16MiB")))
    run(
        "qemu-io", "-f", "raw",
        "-c", "write -P 0xab 1M 256k", "-c", "write -P 0xcd 5M 4k", "-c", "read -P 0xab 1M 256k",
        daemon.url(0),
    )  # fmt: skip
    daemon.stop()
    data = export_image(ceph_cluster, image, tmp_path / "export")
    assert len(data) == 16 * MiB  # created by the daemon with the configured size
    expected = bytearray(16 * MiB)
    expected[MiB : MiB + 256 * 1024] = b"\xab" * (256 * 1024)
    expected[5 * MiB : 5 * MiB + 4096] = b"\xcd" * 4096
    assert data == expected


def test_an_existing_image_keeps_its_size(
    ceph_cluster: CephCluster, new_image: ImageFactory, targetd_factory: DaemonFactory
) -> None:
    image = new_image("24M")
    daemon = targetd_factory(target_toml(rbd_lun_toml(ceph_cluster, image, block_size=4096)))
    out = run("iscsi-readcapacity16", daemon.url(0)).stdout
    assert "Logical Block Length:4096" in out.replace(" ", "") or "4096" in out
    client = BlockClient(daemon.port, IQN, luns=(0,))
    rc16 = client.ok(bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2), read=32)
    assert int.from_bytes(rc16[:8], "big") == 24 * MiB // 4096 - 1
    assert int.from_bytes(rc16[8:12], "big") == 4096
    assert rc16[14] & 0xC0 == 0xC0  # LBPME, LBPRZ: thin provisioned, unmapped reads zero
    vpd_b2 = client.ok(bytes([0x12, 1, 0xB2, 0, 64, 0]), read=64)
    assert vpd_b2[6] & 0x07 == 0x02  # provisioning type: thin
    client.close()


def test_unmap_write_same_and_get_lba_status(
    ceph_cluster: CephCluster, new_image: ImageFactory, targetd_factory: DaemonFactory
) -> None:
    image = new_image("16M")
    daemon = targetd_factory(target_toml(rbd_lun_toml(ceph_cluster, image)))
    client = BlockClient(daemon.port, IQN, luns=(0,))
    payload = os.urandom(128 * BLOCK)
    client.ok(write16(0, 128), data=payload)
    assert lba_status(client.ok(get_lba_status(0), read=4096))[:2] == [
        (0, 128, 0),
        (128, 16 * MiB // BLOCK - 128, 1),
    ]
    cdb, params = unmap(32, 16)
    client.ok(cdb, data=params)
    data = client.ok(read16(0, 128), read=128 * BLOCK)
    assert data[: 32 * BLOCK] == payload[: 32 * BLOCK]
    assert data[32 * BLOCK : 48 * BLOCK] == bytes(16 * BLOCK)
    assert data[48 * BLOCK :] == payload[48 * BLOCK :]
    assert lba_status(client.ok(get_lba_status(0), read=4096))[:3] == [
        (0, 32, 0),
        (32, 16, 1),
        (48, 80, 0),
    ]
    # WRITE SAME(16) with UNMAP: the range is discarded and reads zeros.
    client.ok(bytes([0x93, 0x08]) + (64).to_bytes(8, "big") + (32).to_bytes(4, "big") + bytes(2),
              data=bytes(BLOCK))  # fmt: skip
    assert client.ok(read16(64, 32), read=32 * BLOCK) == bytes(32 * BLOCK)
    # After a restart the allocation comes from the cluster (diff_iterate), not memory.
    client.close()
    daemon.restart()
    client = BlockClient(daemon.port, IQN, luns=(0,))
    status = lba_status(client.ok(get_lba_status(0), read=4096))
    mapped = {lba for lba, n, st in status if st == 0 for lba in range(lba, lba + n)}
    assert set(range(0, 32)) <= mapped
    assert not mapped & set(range(128, 16 * MiB // BLOCK))
    assert (
        client.ok(read16(0, 128), read=128 * BLOCK)
        == data[: 64 * BLOCK] + bytes(32 * BLOCK) + payload[96 * BLOCK :]
    )
    client.close()


def test_compare_and_write(
    ceph_cluster: CephCluster,
    new_image: ImageFactory,
    targetd_factory: DaemonFactory,
    tmp_path: Path,
) -> None:
    image = new_image("16M")
    daemon = targetd_factory(target_toml(rbd_lun_toml(ceph_cluster, image)))
    client = BlockClient(daemon.port, IQN, luns=(0,))
    old = os.urandom(4 * BLOCK)
    new = os.urandom(4 * BLOCK)
    client.ok(write16(100, 4), data=old)
    client.ok(caw(100, 4), data=old + new)
    assert client.ok(read16(100, 4), read=4 * BLOCK) == new
    wrong = bytearray(new)
    wrong[3 * BLOCK + 7] ^= 0xFF
    status, _, sense = client.ini.command(caw(100, 4), data=bytes(wrong) + old)
    assert status == 0x02
    assert (sense[2] & 0xF, sense[12], sense[13]) == (MISCOMPARE, 0x1D, 0x00)
    assert sense[0] & 0x80  # VALID: the information field holds the offset
    assert int.from_bytes(sense[3:7], "big") == 3 * BLOCK + 7
    assert client.ok(read16(100, 4), read=4 * BLOCK) == new
    # Across an object boundary (4 MiB) librbd cannot compare in one operation: the
    # daemon compares itself, with the same answers.
    edge = 4 * MiB // BLOCK - 2
    client.ok(write16(edge, 4), data=old)
    client.ok(caw(edge, 4), data=old + new)
    assert client.ok(read16(edge, 4), read=4 * BLOCK) == new
    client.close()
    daemon.stop()
    data = export_image(ceph_cluster, image, tmp_path / "export")
    assert data[100 * BLOCK : 104 * BLOCK] == new


def test_compare_and_write_is_atomic_between_two_clients(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    """Two clients of one image (two gateways) increment one counter with compare and
    write: no increment is lost, which a compare in each client followed by a write would
    not guarantee."""
    image = new_image("8M")
    rounds = 40
    # Two processes: two rados clients, each with its own connection to the cluster.
    script = Path(__file__).with_name("caw_counter.py")
    argv = [sys.executable, str(script), str(ceph_cluster.conf), ceph_cluster.pool, image]
    procs = [
        subprocess.Popen([*argv, str(rounds)], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [int(o) for o in outs] == [rounds, rounds]
    spec = RbdSpec(ceph_cluster.pool, image, ceph_conf=str(ceph_cluster.conf))
    assert asyncio.run(read_counter(spec)) == 2 * rounds


def test_missing_image_and_unreachable_cluster_name_the_lun(
    ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    def serve(toml: str) -> subprocess.CompletedProcess[str]:
        cfg = tmp_path / "t.toml"
        cfg.write_text(toml)
        return subprocess.run(
            [sys.executable, "-m", "targetd", "serve", "--config", str(cfg), "--listen",
             "127.0.0.1:1", "--state-dir", str(tmp_path / "s")],
            capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        )  # fmt: skip

    done = serve(target_toml(rbd_lun_toml(ceph_cluster, "no-such-image")))
    assert done.returncode == 2
    assert f"target {IQN} lun 0" in done.stderr
    assert "no such image" in done.stderr
    # A monitor address where nothing listens: a bounded wait, then the same kind of error.
    conf = tmp_path / "nowhere.conf"
    conf.write_text(ceph_cluster.conf.read_text().replace(ceph_cluster.mon_host, "v2:127.0.0.1:9"))
    toml = target_toml(rbd_lun_toml(ceph_cluster, "x")).replace(str(ceph_cluster.conf), str(conf))
    toml = toml.replace('cache = "none"', 'cache = "none"\nconnect_timeout = 3')
    done = serve(toml)
    assert done.returncode == 2
    assert f"target {IQN} lun 0" in done.stderr
    assert "monitors" in done.stderr


def test_a_cancelled_write_has_landed_when_its_waiter_ends(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    """An aborted command must not be reported gone while librbd still writes its buffer:
    the waiter of a cancelled write ends only once the write is done."""
    spec = RbdSpec(ceph_cluster.pool, new_image("8M"), ceph_conf=str(ceph_cluster.conf))
    data = os.urandom(4 * MiB)

    async def scenario() -> bytes:
        img = RbdImage(spec)
        try:
            task = asyncio.ensure_future(img.write(0, data))
            await asyncio.sleep(0)  # queued in librbd
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert task.cancelled()
            assert not img._pending  # nothing in flight once the waiter has gone
            back = bytearray(len(data))
            await img.read_into(0, memoryview(back))
            return bytes(back)
        finally:
            img.close()

    assert asyncio.run(scenario()) == data


def test_requests_beyond_the_in_flight_budget_wait_instead_of_blocking_the_loop(
    ceph_cluster: CephCluster, new_image: ImageFactory
) -> None:
    """librbd dispatches in the caller's thread here, where the objecter's throttle would
    block the event loop; the store keeps requests in flight under its own budget."""
    from backing import rbd_cluster

    spec = RbdSpec(ceph_cluster.pool, new_image("16M"), ceph_conf=str(ceph_cluster.conf))
    data = os.urandom(MiB)

    async def scenario() -> tuple[int, int]:
        img = RbdImage(spec)
        try:
            cluster = img._cluster
            peak = [0, 0]

            async def write(i: int) -> None:
                await img.write((i % 16) * MiB, data)

            def watch() -> None:
                peak[0] = max(peak[0], cluster.in_flight_bytes)
                peak[1] = max(peak[1], cluster.in_flight_ops)

            tasks = [asyncio.ensure_future(write(i)) for i in range(96)]
            while not all(t.done() for t in tasks):
                watch()
                await asyncio.sleep(0)
            await asyncio.gather(*tasks)
            assert (cluster.in_flight_bytes, cluster.in_flight_ops) == (0, 0)
            return peak[0], peak[1]
        finally:
            img.close()

    peak_bytes, peak_ops = asyncio.run(scenario())
    assert peak_bytes == rbd_cluster.MAX_IN_FLIGHT_BYTES  # the budget filled, and no more
    assert peak_ops <= rbd_cluster.MAX_IN_FLIGHT_OPS
