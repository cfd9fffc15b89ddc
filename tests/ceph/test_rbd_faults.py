"""Faults on RBD LUNs: the OSD stops mid-I/O and comes back.

This module runs its own cluster with a BlueStore OSD (its data survives an OSD restart,
unlike memstore's), and LUNs with a short ``osd_op_timeout`` so a command fails within a
bounded time instead of hanging.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ceph_fixtures import rbd_lun_toml, target_toml
from cluster import CephCluster, ClusterError
from conftest import DaemonFactory
from pair_scsi import BLOCK, BlockClient, read16, write16
from raw_initiator import RawInitiator

from scsi.sense import parse_sense

IQN = "iqn.2026-11.org.targetd:rbd"
OP_TIMEOUT = 4
MEDIUM_ERROR = 0x03
# Between tries while the OSD comes back: a try that meets it still down waits OP_TIMEOUT
# itself, so a short pause only stops waiting once it is up.
POLL = 0.2


@pytest.fixture(scope="module")
def bluestore_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    try:
        cluster = CephCluster(
            tmp_path_factory.mktemp("ceph-bluestore"), objectstore="bluestore", store_bytes=1 << 30
        ).start()
    except ClusterError as exc:
        pytest.fail(f"cannot start the test cluster: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


def test_osd_down_fails_commands_in_bounded_time_and_service_returns(
    bluestore_cluster: CephCluster, targetd_factory: DaemonFactory, tmp_path: Path
) -> None:
    cluster = bluestore_cluster
    lun = rbd_lun_toml(cluster, "faults", create_size="8MiB").replace(
        'cache = "none"', f'cache = "none"\nosd_op_timeout = {OP_TIMEOUT}'
    )
    daemon = targetd_factory(target_toml(lun))
    client = BlockClient(daemon.port, IQN, luns=(0,))
    client.ini.sock.settimeout(60)
    before = bytes(range(256)) * 16  # 4 KiB
    client.ok(write16(0, 8), data=before)

    cluster.kill_osd()
    started = time.monotonic()
    status, _, sense = client.run(write16(8, 8), data=b"\x55" * 4096)
    elapsed = time.monotonic() - started
    assert status == 0x02 and sense == (MEDIUM_ERROR, 0x0C, 0x00), (status, sense)  # WRITE ERROR
    assert elapsed < OP_TIMEOUT + 10, elapsed
    status, _, sense = client.run(read16(0, 8), read=4096)
    assert status == 0x02 and sense == (MEDIUM_ERROR, 0x11, 0x00), (status, sense)

    cluster.restart_osd()
    deadline = time.monotonic() + 60
    while True:  # the daemon is not restarted: librbd reconnects by itself
        status, data, sense = client.run(read16(0, 8), read=4096)
        if status == 0:
            break
        assert time.monotonic() < deadline, f"still failing after the OSD returned: {sense}"
        time.sleep(POLL)
    assert data == before
    client.ok(write16(8, 8), data=b"\x66" * 4096)
    assert client.ok(read16(8, 8), read=4096) == b"\x66" * 4096
    client.close()
    assert daemon.proc is not None and daemon.proc.poll() is None
    # Its stop (teardown) takes 5 s: the close's notification waits for librbd's own watch
    # from before the outage, which the restarted OSD brought back (docs/rbd.md, "When the
    # cluster cannot be reached").


SLOTS = 32
SLOT = 4096


def stamp(slot: int, gen: int) -> bytes:
    head = slot.to_bytes(4, "big") + gen.to_bytes(4, "big")
    return head * (SLOT // len(head))


@pytest.mark.parametrize("seed", [1])
def test_no_acknowledged_write_is_lost_when_the_osd_and_the_daemon_are_killed(
    bluestore_cluster: CephCluster, targetd_factory: DaemonFactory, seed: int
) -> None:
    """Writes go on while the OSD is killed at a random point (and restarted), then the
    daemon is killed with SIGKILL: every slot holds at least its last acknowledged write, and
    only data that was written to it (a write that failed may or may not have landed)."""
    import os
    import random
    import signal

    rng = random.Random(seed)
    cluster = bluestore_cluster
    lun = rbd_lun_toml(cluster, f"model-{seed}", create_size="8MiB").replace(
        'cache = "none"', f'cache = "none"\nosd_op_timeout = {OP_TIMEOUT}'
    )
    daemon = targetd_factory(target_toml(lun))
    client = BlockClient(daemon.port, IQN, luns=(0,))
    client.ini.sock.settimeout(60)
    acked = dict.fromkeys(range(SLOTS), 0)
    attempted: dict[int, set[int]] = {s: {0} for s in range(SLOTS)}
    kill_at = rng.randrange(5, 40)
    osd_down = False
    for gen in range(1, 61):
        if gen == kill_at:
            cluster.kill_osd()
            osd_down = True
        slot = rng.randrange(SLOTS)
        attempted[slot].add(gen)
        status, _, sense = client.run(write16(slot * SLOT // BLOCK, SLOT // BLOCK),
                                      data=stamp(slot, gen))  # fmt: skip
        if status == 0:
            acked[slot] = gen
            osd_down = False  # up again (or never down)
        else:
            # Only while the OSD is down or not yet back, and with the proper sense.
            assert osd_down and sense == (MEDIUM_ERROR, 0x0C, 0x00), (status, sense)
            if cluster.procs["osd.0"].poll() is not None:
                cluster.restart_osd()
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait()
    client.close()
    daemon.start()
    client = BlockClient(daemon.port, IQN, luns=(0,))
    client.ini.sock.settimeout(60)
    deadline = time.monotonic() + 60
    while True:
        status, image, _ = client.run(read16(0, SLOTS * SLOT // BLOCK), read=SLOTS * SLOT)
        if status == 0 or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    assert status == 0
    for slot in range(SLOTS):
        piece = image[slot * SLOT : (slot + 1) * SLOT]
        got = 0 if piece == bytes(SLOT) else int.from_bytes(piece[4:8], "big")
        assert got == 0 or piece == stamp(slot, got), f"slot {slot} is torn"
        assert got >= acked[slot], f"slot {slot} lost acknowledged generation {acked[slot]}"
        assert got in attempted[slot], f"slot {slot} holds generation {got}, never written"
    client.close()


def test_a_prout_with_the_osd_down_fails_in_bounded_time_and_changes_nothing(
    bluestore_cluster: CephCluster, targetd_factory: DaemonFactory
) -> None:
    """An RBD LUN's reservations live in the cluster (docs/rbd.md): with the OSD down, a
    PERSISTENT RESERVE OUT gets HARDWARE ERROR, LOGICAL UNIT COMMUNICATION TIME-OUT after
    the reservation store's 10 s, not a hang, and changes nothing; once the OSD is back the
    same command succeeds."""
    cluster = bluestore_cluster
    daemon = targetd_factory(target_toml(rbd_lun_toml(cluster, "pr-faults", create_size="8MiB")))
    ini = RawInitiator(daemon.port, name="iqn.2026-11.org.test:holder")
    assert ini.login(IQN).bhs[36:38] == b"\0\0"
    ini.clear_unit_attentions()
    ini.sock.settimeout(60)
    key = 0x1234_5678_9ABC_DEF0
    register = bytes([0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0])  # REGISTER AND IGNORE EXISTING KEY
    params = bytes(8) + key.to_bytes(8, "big") + bytes(8)
    read_keys = bytes([0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0])

    cluster.kill_osd()
    started = time.monotonic()
    status, _, sense = ini.command(register, data=params)
    elapsed = time.monotonic() - started
    assert status == 0x02 and parse_sense(sense) == (0x04, 0x08, 0x01), (status, sense)
    assert elapsed < 20, elapsed
    cluster.restart_osd()
    deadline = time.monotonic() + 60
    while True:
        status, data, sense = ini.command(read_keys, read=256)
        if status == 0:
            break
        assert time.monotonic() < deadline, f"still failing after the OSD returned: {sense}"
        time.sleep(POLL)
    assert data[4:8] == bytes(4)  # the failed REGISTER left nothing
    assert ini.command(register, data=params)[0] == 0
    status, data, _ = ini.command(read_keys, read=256)
    assert status == 0 and data[8:16] == key.to_bytes(8, "big")
    ini.close()
