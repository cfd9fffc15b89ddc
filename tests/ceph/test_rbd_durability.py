"""A model test of FUA and SYNCHRONIZE CACHE on RBD LUNs across kill -9 of the daemon.

One initiator writes generation-stamped blocks, some with FUA, with a SYNCHRONIZE CACHE now
and then, and the daemon is killed with SIGKILL at a random point. Afterwards the image, as
the cluster holds it, must have in every block a generation no older than the last one that
was made durable (acknowledged with FUA, or acknowledged before an acknowledged
SYNCHRONIZE CACHE), and one that was really written there. With librbd's write-back or
write-around cache, a FUA that did not flush would lose its write on the kill and fail
this test.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
from ceph_fixtures import ImageFactory, export_image, rbd_lun_toml, target_toml
from cluster import CephCluster
from conftest import DaemonFactory
from pair_scsi import BLOCK, BlockClient

IQN = "iqn.2026-11.org.targetd:rbd"
BLOCKS = 64  # distinct 4 KiB slots written over and over
ROUNDS = 3  # each ends with kill -9
SLOT = 4096


def stamp(slot: int, gen: int) -> bytes:
    head = slot.to_bytes(4, "big") + gen.to_bytes(4, "big")
    return (head * (SLOT // len(head)))[:SLOT]


def read_stamp(data: bytes, slot: int) -> int:
    piece = data[slot * SLOT : (slot + 1) * SLOT]
    if piece == bytes(SLOT):
        return 0
    gen = int.from_bytes(piece[4:8], "big")
    assert piece == stamp(slot, gen), f"slot {slot} holds a torn or foreign block"
    return gen


@pytest.mark.parametrize("cache", ["none", "writearound", "writeback"])
def test_acknowledged_fua_and_flushed_writes_survive_kill9(
    ceph_cluster: CephCluster,
    new_image: ImageFactory,
    targetd_factory: DaemonFactory,
    tmp_path: Path,
    cache: str,
) -> None:
    rng = random.Random(f"durability-{cache}")
    image = new_image("4M")
    daemon = targetd_factory(target_toml(rbd_lun_toml(ceph_cluster, image, cache=cache)))
    written: dict[int, list[int]] = {s: [] for s in range(BLOCKS)}
    durable = dict.fromkeys(range(BLOCKS), 0)
    gen = 0
    for round_ in range(ROUNDS):
        client = BlockClient(daemon.port, IQN, luns=(0,))
        since_sync: dict[int, int] = {}
        for _ in range(rng.randrange(20, 80)):
            gen += 1
            slot = rng.randrange(BLOCKS)
            fua = rng.random() < 0.3
            lba = slot * SLOT // BLOCK
            cdb = bytes([0x8A, 0x08 if fua else 0]) + lba.to_bytes(8, "big")
            cdb += (SLOT // BLOCK).to_bytes(4, "big") + bytes(2)
            client.ok(cdb, data=stamp(slot, gen))
            written[slot].append(gen)
            if fua:
                durable[slot] = gen
            else:
                since_sync[slot] = gen
            if rng.random() < 0.1:
                client.ok(bytes([0x35]) + bytes(9))  # SYNCHRONIZE CACHE(10), whole LU
                for s, g in since_sync.items():
                    durable[s] = max(durable[s], g)
                since_sync.clear()
        assert daemon.proc is not None
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait()
        client.close()
        data = export_image(ceph_cluster, image, tmp_path / "export")
        for slot in range(BLOCKS):
            got = read_stamp(data, slot)
            assert got >= durable[slot], (
                f"round {round_}: slot {slot} lost generation {durable[slot]} (holds {got})"
            )
            assert got == 0 or got in written[slot]
            # What the image holds now is what the next round starts from.
            durable[slot] = got
        if round_ + 1 < ROUNDS:
            # For the next round only: after the last one a restart would just be stopped
            # again (it fences the killed run's watch at once: docs/rbd.md, "Locking").
            daemon.start()
