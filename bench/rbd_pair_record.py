#!/usr/bin/env python3
"""What a host write on a pair of RBD LUNs costs when the pair's record is in the cluster
(two gateways, docs/rbd.md "Pairs with two gateways") beside a local pair file.

A write to a chunk whose bit is not yet durable waits for the bit first (the write-intent
rule, docs/pairs.md): with a pair file that is a ``pwrite`` + ``fdatasync`` of the state
dir's disk; with the record in the cluster, one guarded RADOS write of the bitmap page.
Measured in one run on one cluster, host 4 KiB writes at queue depth 1, each to a chunk
written for the first time (every write pays the commit: the worst case), on:

- ``unpaired``: the image alone (the floor);
- ``duplex``: a DUPLEX pair (the background copy held to a crawl): the copy-set bit;
- ``split``: a SPLIT pair: the source-changed bit;

each with ``file`` (the record in a local pair file) and ``cluster`` (the record in a
RADOS object); the three cases of a state take turns write by write.

    python3 bench/rbd_pair_record.py [--writes 200] [--repeat 3]
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from latency import pct
from rbd_rounds import CephCluster, arguments, run_rounds  # first: it puts the repo on the path

from backing.pairs import PairManager, PairSettings, PairVolume, Phase
from backing.rados_object import RadosObject
from backing.rbd_image import RbdImage, RbdSpec

MiB = 1 << 20
CHUNK = PairSettings().chunk_size
RECORDS = ("file", "cluster")
STATES = ("duplex", "split")


async def one_round(cluster: CephCluster, tmp: Path, size: int, n: int, seed: int
                    ) -> dict[str, list[float]]:  # fmt: skip
    """Per state, an unpaired image and two pairs (record in a file, in the cluster) on
    fresh images; the writes go to the three in turn (the order rotating), so load that
    drifts during the run weighs on each case alike."""
    rng = random.Random(seed)
    conf = str(cluster.conf)
    block = rng.randbytes(4096)
    out: dict[str, list[float]] = {}
    offsets = [c * CHUNK for c in rng.sample(range(1, size // CHUNK), n)]
    for state in STATES:
        images: list[RbdImage] = []
        managers: list[PairManager] = []

        def image(name: str, images: list[RbdImage] = images) -> RbdImage:
            cluster.rbd("create", "--size", f"{size >> 20}M", f"rbd/{name}")
            images.append(RbdImage(RbdSpec(pool="rbd", image=name, ceph_conf=conf)))
            return images[-1]

        try:
            writers = {"unpaired": image(f"u{seed}{state}").write}
            for record in RECORDS:
                s_img, t_img = image(f"s{seed}{state}{record}"), image(f"t{seed}{state}{record}")
                # DUPLEX: update copies held to a crawl, off the timed path.
                settings = PairSettings(copy_rate=1 if state == "duplex" else 0)
                manager = PairManager(tmp / f"p{seed}{state}{record}", settings)
                managers.append(manager)
                vsrc, vtgt = PairVolume("b/src", s_img), PairVolume("b/tgt", t_img)
                if record == "cluster":
                    oid = f"targetd.pair.t{seed}{state}{record}"
                    vtgt.record_object = lambda oid=oid: RadosObject(
                        ceph_conf=conf, client="client.admin", keyring="", pool="rbd",
                        namespace="", oid=oid, timeout=10.0,
                    )  # fmt: skip
                manager.register_volume(vsrc)
                manager.register_volume(vtgt)
                # An empty source: the creation copy has nothing to do.
                await manager.create("p", "b/src", "b/tgt")
                pair = manager.get("p")
                await pair.wait_until(lambda p: p.phase is Phase.DUPLEX)
                if state == "split":
                    await manager.split("p")
                    await pair.wait_until(lambda p: p.phase is Phase.SPLIT)
                writers[f"{state} {record}"] = vsrc.write
            names = list(writers)
            for name in names:
                await writers[name](0, block)  # librbd takes each lock at the first write
                out.setdefault(name, [])
            for i, off in enumerate(offsets):
                for name in names[i % 3 :] + names[: i % 3]:
                    t = time.perf_counter()
                    await writers[name](off, block)
                    out[name].append(time.perf_counter() - t)
            for manager in managers:
                await manager.delete("p")
        finally:
            for manager in managers:
                await manager.stop()
            for img in images:
                img.close()
    return out


def main() -> int:
    parser = arguments(__doc__, size_mib=128)
    args = parser.parse_args()
    size = args.size * MiB
    if args.writes >= size // CHUNK:
        parser.error("--writes is more than the chunks: make --size larger")
    merged = run_rounds(
        lambda cluster, tmp, r: one_round(cluster, tmp, size, args.writes, r),
        prefix="targetd-pair-record-", repeat=args.repeat, objectstore=args.objectstore,
    )  # fmt: skip
    floor = pct(merged["unpaired"], 0.5)
    print(f"{'host 4 KiB write, QD1':<22} {'p50 ms':>8} {'p99 ms':>8} {'p50 / unpaired':>15}")
    print(f"{'unpaired':<22} {floor:>8.2f} {pct(merged['unpaired'], 0.99):>8.2f} {1.0:>15.2f}")
    for state in STATES:
        for record in RECORDS:
            v = merged[f"{state} {record}"]
            print(f"{state + ', ' + record:<22} {pct(v, 0.5):>8.2f} {pct(v, 0.99):>8.2f} "
                  f"{pct(v, 0.5) / floor:>15.2f}")  # fmt: skip
    for state in STATES:
        ratio = pct(merged[f"{state} cluster"], 0.5) / pct(merged[f"{state} file"], 0.5)
        print(f"{state}: cluster / file p50 = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
