"""Volume pairs with two gateways (docs/rbd.md, "Pairs with two gateways"): the pair's
record in the cluster, run by the gateway holding its source's lock, resumed by the other
after a kill -9, the split snapshot taken over with it, and never two copies at once.
Real cluster, real daemons; the images compared with ``rbd export``."""

from __future__ import annotations

import random
import re
import signal
import time
import urllib.request
from pathlib import Path

from ceph_fixtures import ImageFactory, export_image
from cluster import CephCluster
from gateways import IQN, GatewayPair, PairFactory, gateway_pair
from pair_scsi import RESYNC, SPLIT, BlockClient, Status, pair_in, pair_out

__all__ = ["gateway_pair"]

MiB = 1 << 20
SIZE = 8 * MiB
CHUNK = 64 << 10
SOURCE, TARGET = 0, 1


def pairs_table(rate: str, clear_delay_ms: int = 5000) -> str:
    delay = f"clear_delay_ms = {clear_delay_ms}\n" if clear_delay_ms != 5000 else ""
    return f'[pairs]\nchunk_size = "64KiB"\ncopy_rate = "{rate}"\n{delay}\n'


def survivor_faster(a_rate: str, clear_delay_ms: int = 5000) -> dict[str, str]:
    """A copies at ``a_rate``, slow enough to be killed mid-copy; B, which only ever runs the
    pair after A is dead, at 8 MiB/s: where it resumes is what is tested, not how fast."""
    return {"a": pairs_table(a_rate, clear_delay_ms), "b": pairs_table("8MiB", clear_delay_ms)}


def client(gw: GatewayPair, which: str) -> BlockClient:
    daemon = gw.a if which == "a" else gw.b
    return BlockClient(daemon.port, IQN, luns=(SOURCE, TARGET), name=f"iqn.2026-11.t:{which}")


def retried(fn, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """``fn()`` until it stops failing with NOT READY (the lock moving: 02h/04h/0Ah) or a
    unit attention, as an initiator retries."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except AssertionError as err:
            if "(2, 4, 10)" not in str(err) and "(6, " not in str(err):
                raise
            assert time.monotonic() < deadline, err
            time.sleep(0.05)


def status(c: BlockClient, lun: int = SOURCE) -> Status:
    return retried(lambda: Status.parse(c.ok(pair_in(), lun=lun, read=96)))


def wait_status(c: BlockClient, want: tuple[str, str], timeout: float = 60.0) -> Status:
    deadline = time.monotonic() + timeout
    while True:
        st = status(c)
        if (st.source, st.target) == want:
            return st
        assert time.monotonic() < deadline, f"still {st}"
        time.sleep(0.1)


def fill(c: BlockClient, rng: random.Random, model: bytearray, chunks: list[int]) -> None:
    for chunk in chunks:
        data = rng.randbytes(CHUNK)
        retried(lambda chunk=chunk, data=data: c.write(SOURCE, chunk * CHUNK, data))
        model[chunk * CHUNK : (chunk + 1) * CHUNK] = data


def runs_here(daemon: object) -> int:
    return daemon.stderr.count("runs here")  # type: ignore[attr-defined]


def test_kill9_mid_resync_the_survivor_resumes_where_it_stood(
    ceph_cluster: CephCluster, new_image: ImageFactory, gateway_pair: PairFactory, tmp_path: Path
) -> None:
    source, target = new_image("8M"), new_image("8M")
    # Copied chunks reach the record as clean within about 2 s (clear_delay 0.2 s, aged at
    # each 1 s commit): a mirroring pair's cleared bits are held that long.
    tables = survivor_faster("512KiB", clear_delay_ms=200)
    gw = gateway_pair(source, more_images=(target,), takeover_ms=2000, tables=tables)
    rng = random.Random(1)
    model = bytearray(SIZE)
    a = client(gw, "a")
    fill(a, rng, model, [0, 1, 2, 3])  # the creation copy: 4 chunks
    retried(lambda: a.create(SOURCE, TARGET, b"vol"))
    wait_status(a, ("DUPLEX", "DUPLEX"))
    a.ok(pair_out(SPLIT))
    fill(a, rng, model, list(range(8, 128, 2)))  # 60 chunks changed since the split
    a.ok(pair_out(RESYNC))
    b = client(gw, "b")
    # B shows the pair from its record: RESYNC, and run by A alone.
    wait_status(b, ("RESYNC", "RESYNC"), timeout=10)
    while (st := status(a)).dirty > 30:
        time.sleep(0.05)
    left = st.dirty
    assert 20 < left <= 30, st
    gw.kill(gw.a)
    assert runs_here(gw.b) == 0, gw.b.stderr  # never while A ran it
    done = wait_status(b, ("DUPLEX", "DUPLEX"), timeout=60)
    b.close()
    assert runs_here(gw.b) == 1, gw.b.stderr
    # Resumed from the record, not from the start: at most what A had left plus the
    # clears A had not written yet (about 2 s at 512 KiB/s: 16 chunks).
    copied = done.copied // CHUNK
    assert left <= copied <= left + 16 + 4, (left, copied)
    assert copied < 60
    assert export_image(ceph_cluster, target, tmp_path / "t") == bytes(model)
    assert export_image(ceph_cluster, source, tmp_path / "s") == bytes(model)
    assert "breaking its lock" in gw.b.stderr


def test_split_through_a_is_split_through_b_and_exact_after_a_dies(
    ceph_cluster: CephCluster, new_image: ImageFactory, gateway_pair: PairFactory, tmp_path: Path
) -> None:
    source, target = new_image("8M"), new_image("8M")
    tables = survivor_faster("256KiB")
    gw = gateway_pair(source, more_images=(target,), takeover_ms=2000, tables=tables)
    rng = random.Random(2)
    model = bytearray(SIZE)
    a = client(gw, "a")
    fill(a, rng, model, list(range(0, 128, 4)))  # 32 chunks: 4 s at 512 KiB/s
    retried(lambda: a.create(SOURCE, TARGET, b"snap"))
    a.ok(pair_out(SPLIT))  # a quick split: most of the creation copy is the split set
    split_image = bytes(model)
    st = status(a)
    assert (st.source, st.target) == ("SPLIT", "SPLIT-PENDING") and st.dirty > 16, st
    gw.wait_log(gw.a, "split set read from snapshot")
    snaps = ceph_cluster.rbd("snap", "ls", f"{ceph_cluster.pool}/{source}")
    assert "targetd-split-" in snaps
    fill(a, rng, model, list(range(0, 128, 6)))  # after the split: not in the split image
    b = client(gw, "b")
    seen = wait_status(b, ("SPLIT", "SPLIT-PENDING"), timeout=10)
    assert seen.split_ms == st.split_ms and seen.name == "snap"
    gw.kill(gw.a)
    wait_status(b, ("SPLIT", "SPLIT"), timeout=60)
    b.close()
    assert runs_here(gw.b) == 1, gw.b.stderr
    assert export_image(ceph_cluster, target, tmp_path / "t") == split_image
    assert export_image(ceph_cluster, source, tmp_path / "s") == bytes(model)
    deadline = time.monotonic() + 10
    while "targetd-split-" in ceph_cluster.rbd("snap", "ls", f"{ceph_cluster.pool}/{source}"):
        assert time.monotonic() < deadline, "the split snapshot was not removed"
        time.sleep(0.2)


def test_two_gateways_never_copy_one_pair_at_once(
    ceph_cluster: CephCluster, new_image: ImageFactory, gateway_pair: PairFactory, tmp_path: Path
) -> None:
    source, target = new_image("8M"), new_image("8M")
    gw = gateway_pair(
        source, more_images=(target,), tables=pairs_table("1MiB"), hold_ms=300, metrics=True
    )
    rng = random.Random(3)
    model = bytearray(SIZE)
    a, b = client(gw, "a"), client(gw, "b")
    fill(a, rng, model, list(range(0, 96)))  # 96 chunks: 6 s of creation copy
    retried(lambda: a.create(SOURCE, TARGET, b"one"))
    time.sleep(2.5)  # B's pair asks for the lock every second meanwhile: A keeps it
    assert runs_here(gw.a) == 0 and runs_here(gw.b) == 0  # A made it: running from creation
    assert "lock taken" not in gw.b.stderr
    # A host write through B moves the lock, and the pair with it: A stops its copy
    # before it gives the lock up, and B resumes it from the record.
    fill(b, rng, model, [100])
    gw.wait_log(gw.b, "runs here")
    a_log = gw.a.stderr
    assert a_log.index("handed over") < a_log.index("lock given up"), a_log
    wait_status(b, ("DUPLEX", "DUPLEX"), timeout=60)
    assert export_image(ceph_cluster, target, tmp_path / "t") == bytes(model)
    assert (gw.a.stderr.count("handed over"), runs_here(gw.b)) == (1, 1)
    for name, expected in (("a", 0), ("b", 1)):
        url = f"http://127.0.0.1:{gw.metrics_ports[name]}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        assert re.search(rf'^targetd_pair_runs_here{{pair="one",[^}}]*}} {expected}$', text, re.M)
    # Split through B; then a host write to the (writable) target through A brings the
    # pair back to A first, so the target's change is tracked in the record.
    b.ok(pair_out(SPLIT))
    wait_status(b, ("SPLIT", "SPLIT"), timeout=10)
    time.sleep(0.5)  # past B's hold time
    data = rng.randbytes(CHUNK)
    retried(lambda: a.write(TARGET, 5 * CHUNK, data))
    assert runs_here(gw.a) == 1, gw.a.stderr
    st = status(a)
    assert (st.source, st.target, st.changed) == ("SPLIT", "SPLIT", 1), st  # chunk 5
    assert retried(lambda: b.read(TARGET, 5 * CHUNK, CHUNK)) == data
    a.close()
    b.close()


def test_split_snapshot_survives_fencing_of_its_gateway(
    ceph_cluster: CephCluster, new_image: ImageFactory, gateway_pair: PairFactory, tmp_path: Path
) -> None:
    """A, reflecting a split from the source's snapshot, is frozen (SIGSTOP): B fences it,
    claims the record and goes on from the snapshot. A, woken up, finds its image
    blocklisted and its record claimed: it neither suspends the pair nor writes a byte."""
    source, target = new_image("8M"), new_image("8M")
    gw = gateway_pair(source, more_images=(target,), takeover_ms=2000, tables=pairs_table("512KiB"))
    rng = random.Random(4)
    model = bytearray(SIZE)
    a = client(gw, "a")
    fill(a, rng, model, list(range(0, 128, 4)))
    retried(lambda: a.create(SOURCE, TARGET, b"fence"))
    a.ok(pair_out(SPLIT))
    split_image = bytes(model)
    gw.wait_log(gw.a, "split set read from snapshot")
    fill(a, rng, model, list(range(1, 128, 5)))  # after the split
    a.close()
    b = client(gw, "b")
    wait_status(b, ("SPLIT", "SPLIT-PENDING"), timeout=10)
    gw.kill(gw.a, signal.SIGSTOP)
    gw.wait_log(gw.b, "runs here", timeout=30)
    gw.kill(gw.a, signal.SIGCONT)
    gw.wait_log(gw.a, "rejoined", timeout=30)
    done = wait_status(b, ("SPLIT", "SPLIT"), timeout=60)
    assert done.reason == 0
    a = client(gw, "a")
    wait_status(a, ("SPLIT", "SPLIT"), timeout=5)  # A shows the record again, read anew
    a.close()
    b.close()
    assert "SUSPENDED" not in gw.a.stderr + gw.b.stderr
    assert export_image(ceph_cluster, target, tmp_path / "t") == split_image
    assert export_image(ceph_cluster, source, tmp_path / "s") == bytes(model)


def test_a_shared_primary_with_two_secondaries_is_resumed_whole_by_the_survivor(
    ceph_cluster: CephCluster, new_image: ImageFactory, gateway_pair: PairFactory, tmp_path: Path
) -> None:
    """1:N on images both gateways serve: LUN 0 mirrored onto LUN 1 and LUN 2 through A,
    each pair's record in the cluster; A killed mid creation copy: B takes the primary's
    lock and runs both pairs (neither is left behind), each finishing its own copy."""
    source, first, second = new_image("8M"), new_image("8M"), new_image("8M")
    tables = survivor_faster("512KiB", clear_delay_ms=200)
    gw = gateway_pair(source, more_images=(first, second), takeover_ms=2000, tables=tables)
    rng = random.Random(6)
    model = bytearray(SIZE)
    a = BlockClient(gw.a.port, IQN, luns=(0, 1, 2), name="iqn.2026-11.t:a")
    fill(a, rng, model, list(range(0, 128, 2)))  # 64 chunks: 8 s per pair at 512 KiB/s
    retried(lambda: a.create(SOURCE, 1, b"s1"))
    retried(lambda: a.create(SOURCE, 2, b"s2"))  # refused before: one secondary when shared
    for lun in (1, 2):
        st = retried(lambda lun=lun: a.status(lun))
        assert (st.name, st.target) == (f"s{lun}", "DUPLEX-PENDING"), st
    fill(a, rng, model, [1, 3, 5, 64, 65])  # each write marked in both pairs' records
    while retried(lambda: a.status(1)).dirty > 48 or retried(lambda: a.status(2)).dirty > 48:
        time.sleep(0.05)
    gw.kill(gw.a)
    b = BlockClient(gw.b.port, IQN, luns=(0, 1, 2), name="iqn.2026-11.t:b")
    for lun in (1, 2):
        deadline = time.monotonic() + 60
        while (st := retried(lambda lun=lun: b.status(lun))).target != "DUPLEX" or st.dirty:
            assert time.monotonic() < deadline, f"s{lun} still {st}"
            time.sleep(0.1)
    b.close()
    assert gw.b.stderr.count("runs here") == 2, gw.b.stderr
    assert export_image(ceph_cluster, first, tmp_path / "1") == bytes(model)
    assert export_image(ceph_cluster, second, tmp_path / "2") == bytes(model)
