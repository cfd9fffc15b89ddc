#!/usr/bin/env python3
"""A pair split on RBD: copy-before-write (the generic engine) beside the split snapshot
(``[pairs] rbd_snapshot_split``, docs/rbd.md "Pairs and EXTENDED COPY"), on the same images.

After a split the split-instant image must stay exact. The generic engine keeps it on the
source image by copy-before-write: a host write to a source chunk still in the split set
first copies that chunk (256 KiB) to the target. With the split snapshot, the engine takes
an RBD snapshot of the source once the split is acknowledged and reads the split set from
it; host writes to the source then go straight to the image (where the OSD clones an
object on its first write after the snapshot). Measured, in one run on one cluster, with
host 4 KiB writes at queue depth 1 to random chunks of the source, the background copy
held to a crawl so the whole volume stays the split set:

- ``unpaired``: the image alone (the floor);
- ``generic`` and ``snapshot``: the writes right after the split is acknowledged, and the
  split's acknowledgement; for ``snapshot`` also the time until the snapshot is open (the
  writes before then still copy first, and librbd holds writes back while it takes it).

    python3 bench/rbd_pair_split.py [--size 256] [--writes 200] [--repeat 3]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

from latency import pct, timed_writes
from rbd_rounds import CephCluster, arguments, run_rounds  # first: it puts the repo on the path

from backing.pairs import PairManager, PairSettings, PairVolume
from backing.rbd_image import RbdImage, RbdSpec

MiB = 1 << 20
CHUNK = PairSettings().chunk_size
KINDS = (("generic", False), ("snapshot", True))


async def one_round(cluster: CephCluster, tmp: Path, size: int, n: int, seed: int
                    ) -> dict[str, list[float]]:  # fmt: skip
    rng = random.Random(seed)
    src_name, tgt_name = f"src{seed}", f"tgt{seed}"
    cluster.rbd("create", "--size", f"{size >> 20}M", f"rbd/{src_name}")
    cluster.rbd("create", "--size", f"{size >> 20}M", f"rbd/{tgt_name}")
    cluster.rbd("bench", "--io-type", "write", "--io-size", "1M", "--io-threads", "16",
                "--io-total", str(size), "--io-pattern", "seq", f"rbd/{src_name}",
                timeout=600)  # fmt: skip
    conf = str(cluster.conf)
    src = RbdImage(RbdSpec(pool="rbd", image=src_name, ceph_conf=conf))
    tgt = RbdImage(RbdSpec(pool="rbd", image=tgt_name, ceph_conf=conf))
    block = rng.randbytes(4096)
    chunks = rng.sample(range(size // CHUNK), 3 * n)

    def offsets(part: int) -> list[int]:
        picked = chunks[part * n : (part + 1) * n]
        return [c * CHUNK + rng.randrange(CHUNK // 4096) * 4096 for c in picked]

    out: dict[str, list[float]] = {}
    try:
        await src.write(0, block)  # the lock is taken by the first write, before
        out["unpaired"] = await timed_writes(lambda off: src.write(off, block), offsets(0))
        kinds = KINDS if seed % 2 == 0 else KINDS[::-1]
        for part, (kind, snapshot) in enumerate(kinds, start=1):
            settings = PairSettings(copy_rate=1, snapshot_split=snapshot)
            manager = PairManager(tmp / f"pairs{seed}{kind}", settings)
            vsrc, vtgt = PairVolume("b/src", src), PairVolume("b/tgt", tgt)
            manager.register_volume(vsrc)
            manager.register_volume(vtgt)
            await manager.create("p", "b/src", "b/tgt")
            pair = manager.get("p")
            t = time.perf_counter()
            await manager.split("p")
            out[f"{kind}: acknowledgement"] = [time.perf_counter() - t]
            opened: list[float] = []

            async def watch(started: float, pair: object, opened: list[float]) -> None:
                while getattr(pair, "_frozen", None) is None:
                    await asyncio.sleep(0.001)
                opened.append(time.perf_counter() - started)

            watcher = asyncio.ensure_future(watch(t, pair, opened))

            def write_source(off: int, volume: PairVolume = vsrc) -> Awaitable[object]:
                return volume.write(off, block)

            out[kind] = await timed_writes(write_source, offsets(part))
            if snapshot:
                await asyncio.wait_for(watcher, 60)
                out["snapshot: open after"] = opened
            else:
                watcher.cancel()
            await manager.delete("p")
            await manager.stop()
    finally:
        src.close()
        tgt.close()
    return out


def main() -> int:
    parser = arguments(__doc__, size_mib=256)
    args = parser.parse_args()
    size = args.size * MiB
    if 3 * args.writes > size // CHUNK:
        parser.error("--writes is more than a third of the chunks: make --size larger")
    merged = run_rounds(
        lambda cluster, tmp, r: one_round(cluster, tmp, size, args.writes, r),
        prefix="targetd-rbd-split-", repeat=args.repeat, objectstore=args.objectstore,
    )  # fmt: skip
    floor = pct(merged["unpaired"], 0.5)
    print(f"{'host 4 KiB write, QD1':<24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'p50 / unpaired':>15}")  # fmt: skip
    for name in ("unpaired", "generic", "snapshot"):
        v = merged[name]
        print(f"{name:<24} {pct(v, 0.5):>8.2f} {pct(v, 0.99):>8.2f} {max(v) * 1e3:>8.2f} "
              f"{pct(v, 0.5) / floor:>15.2f}")  # fmt: skip
    print(f"{'split':<32} {'median ms':>9}")
    for name in ("generic: acknowledgement", "snapshot: acknowledgement", "snapshot: open after"):
        print(f"{name:<32} {statistics.median(merged[name]) * 1e3:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
