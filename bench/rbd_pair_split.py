#!/usr/bin/env python3
"""Would an RBD snapshot make a pair's split cheaper? The generic engine beside the costs a
snapshot-based split would have, on the same RBD images (docs/rbd.md, "Pairs").

After a split, the generic engine keeps the split-instant image exact by copy-before-write:
a host write to a source chunk still in the split set first copies that chunk (256 KiB) to
the target. A snapshot-based split would take an RBD snapshot of the source instead, copy
the split set from the snapshot, and let host writes go straight to the image, where the
OSD clones each 4 MiB object on its first write after the snapshot. This measures, in one
run on one cluster, for host 4 KiB writes at queue depth 1 to random chunks of the source:

- ``unpaired``: the image alone (the floor);
- ``generic split``: the pair split with the whole volume as split set (the background copy
  held to a crawl), so every write to a chunk not yet copied pays copy-before-write;
- ``during rbd_snap_create``: writes while the snapshot of an in-sync pair's source is
  being taken (librbd holds writes back until it exists);
- ``after snapshot``: the same writes once that pair is split after the snapshot: the
  changed-chunk bits marked as in any split, the write straight to the image (where the
  OSD clones an object on its first write), no copy-before-write: the host path a
  snapshot-based split would leave;

and the split's own cost: the generic split's acknowledgement, and ``rbd_snap_create`` /
``rbd_snap_remove`` (a snapshot-based split pays the first before the copy can skip the
copy-before-write, and the second when the pair is split).

    python3 bench/rbd_pair_split.py [--size 256] [--writes 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "ceph"))
from cluster import CephCluster  # noqa: E402

from backing.pairs import PairManager, PairSettings, PairVolume, VolumeState  # noqa: E402
from backing.rbd_image import RbdImage, RbdSpec  # noqa: E402
from backing.rbd_lib import check, lib  # noqa: E402

MiB = 1 << 20
CHUNK = PairSettings().chunk_size


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def blocking(fn: Callable[[], int], what: str) -> float:
    t = time.perf_counter()
    await asyncio.get_running_loop().run_in_executor(None, lambda: check(fn(), what))
    return time.perf_counter() - t


async def writes_at(write: Callable[[int], Awaitable[None]], offsets: list[int]) -> list[float]:
    out = []
    for off in offsets:
        t = time.perf_counter()
        await write(off)
        out.append(time.perf_counter() - t)
    return out


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
    chunks = rng.sample(range(size // CHUNK), 4 * n)

    def offsets(part: int) -> list[int]:
        picked = chunks[part * n : (part + 1) * n]
        return [c * CHUNK + rng.randrange(CHUNK // 4096) * 4096 for c in picked]

    out: dict[str, list[float]] = {}
    try:
        # The floor: the image alone (the lock is taken by the first write, before).
        await src.write(0, block)
        out["unpaired"] = await writes_at(lambda off: src.write(off, block), offsets(0))
        # The generic engine: the whole volume is the split set, its copy held to a crawl.
        manager = PairManager(tmp / f"pairs{seed}", PairSettings(copy_rate=1))
        vsrc, vtgt = PairVolume("b/src", src), PairVolume("b/tgt", tgt)
        manager.register_volume(vsrc)
        manager.register_volume(vtgt)
        await manager.create("p", "b/src", "b/tgt")
        t = time.perf_counter()
        await manager.split("p")
        out["generic split: acknowledgement"] = [time.perf_counter() - t]
        out["generic split"] = await writes_at(lambda off: vsrc.write(off, block), offsets(1))
        await manager.delete("p")
        await manager.stop()
        # A snapshot-based split: an in-sync pair (its copy done), the snapshot taken, then
        # the split, whose split set the snapshot would serve: host writes go to the image
        # and mark the changed bits as in any split, with no copy-before-write.
        manager = PairManager(tmp / f"pairs{seed}b", PairSettings())
        vsrc, vtgt = PairVolume("b/src", src), PairVolume("b/tgt", tgt)
        manager.register_volume(vsrc)
        manager.register_volume(vtgt)
        await manager.create("q", "b/src", "b/tgt")
        await manager.wait("q", VolumeState.DUPLEX, timeout=600)
        image = src._image  # a bench: the handle a snapshot-based split would use
        # Host writes while the snapshot is taken: librbd holds every write to the image
        # back until the snapshot exists.
        during: list[float] = []
        creating = asyncio.ensure_future(blocking(
            lambda: lib().rbd_snap_create(image, b"split"), "rbd_snap_create"))  # fmt: skip
        for off in offsets(3):
            if creating.done():
                break
            during += await writes_at(lambda at: vsrc.write(at, block), [off])
        out["rbd_snap_create"] = [await creating]
        out["during rbd_snap_create"] = during
        await manager.split("q")
        out["after snapshot"] = await writes_at(lambda off: vsrc.write(off, block), offsets(2))
        await manager.delete("q")
        await manager.stop()
        out["rbd_snap_remove"] = [await blocking(
            lambda: lib().rbd_snap_remove(image, b"split"), "rbd_snap_remove")]  # fmt: skip
    finally:
        src.close()
        tgt.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="MiB per image")
    parser.add_argument("--writes", type=int, default=200, help="host writes per case")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--objectstore", default="bluestore")
    args = parser.parse_args()
    import uvloop

    size = args.size * MiB
    if 4 * args.writes > size // CHUNK:
        parser.error("--writes is more than a quarter of the chunks: make --size larger")
    merged: dict[str, list[float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="targetd-rbd-split-") as tmp,
        CephCluster(Path(tmp) / "ceph", objectstore=args.objectstore) as cluster,
    ):
        for r in range(args.repeat):
            got = uvloop.run(one_round(cluster, Path(tmp), size, args.writes, r))
            for name, values in got.items():
                merged.setdefault(name, []).extend(values)
                if len(values) > 1:
                    print(f"  [{r + 1}] {name:<16} p50 {pct(values, 0.5):7.2f} ms",
                          file=sys.stderr, flush=True)  # fmt: skip
    print(f"{'host 4 KiB write, QD1':<24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'p50 / unpaired':>15}")  # fmt: skip
    floor = pct(merged["unpaired"], 0.5)
    for name in ("unpaired", "generic split", "during rbd_snap_create", "after snapshot"):
        v = merged[name]
        print(f"{name:<24} {pct(v, 0.5):>8.2f} {pct(v, 0.99):>8.2f} {max(v) * 1e3:>8.2f} "
              f"{pct(v, 0.5) / floor:>15.2f}")  # fmt: skip
    print(f"{'split cost':<24} {'median ms':>8}")
    for name in ("generic split: acknowledgement", "rbd_snap_create", "rbd_snap_remove"):
        print(f"{name:<32} {statistics.median(merged[name]) * 1e3:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
