#!/usr/bin/env python3
"""The RBD store alone, with no iSCSI: ``RbdImage`` at a queue depth, beside ``rbd bench``.

Starts a one-OSD cluster (tests/ceph/cluster.py), writes one image once, then runs each case
(1 MiB QD16 and 4 KiB QD32, reads and writes, sequential; random 4 KiB ones on request, a
stride apart as in compare_rbd.py) on ``backing.rbd_image.RbdImage`` in this process under
uvloop and with ``rbd bench`` (native librbd), alternating. Printed: medians, the ratio,
and this process's CPU per 1,000 requests. When targetd's end-to-end figure
(bench/compare_rbd.py) falls short of this one, the gap is in the iSCSI path; when this one
falls short of ``rbd bench``, it is in the store (ctypes, completions, budget).

    python3 bench/rbd_store.py [--repeat 3] [--size 256M] [--cases read-1M,randwrite-4K]
                               [--cache writearound]
                               [--profile FILE]   # cProfile of the store runs
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "ceph"))
from cluster import CephCluster  # noqa: E402

from backing.rbd_image import RbdImage, RbdSpec  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
# name: (write, request size, queue depth, random)
CASES = {
    "write-1M": (True, MiB, 16, False),
    "read-1M": (False, MiB, 16, False),
    "write-4K": (True, 4 * KiB, 32, False),
    "read-4K": (False, 4 * KiB, 32, False),
    "randwrite-4K": (True, 4 * KiB, 32, True),
    "randread-4K": (False, 4 * KiB, 32, True),
}
DEFAULT_CASES = "write-1M,read-1M,write-4K,read-4K"
# As compare_rbd.py's random cases: each request this many blocks on from the last (about
# 160 MiB), wrapping in the image, so none are adjacent and none merge.
SCATTER_STRIDE_BLOCKS = 40_961


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def store_run(image: RbdImage, write: bool, bs: int, depth: int, count: int,
                    region: int, random: bool = False) -> tuple[float, float]:  # fmt: skip
    """(requests per second, CPU seconds per 1,000 requests) for ``count`` requests."""
    blocks = region // bs
    stride = SCATTER_STRIDE_BLOCKS if random else 1
    next_block = 0
    bufs = [memoryview(bytearray(b"\x5a" * bs)) for _ in range(depth)]

    async def one(buf: memoryview, n: int) -> None:
        nonlocal next_block
        for _ in range(n):
            at = (next_block * stride % blocks) * bs
            next_block += 1
            if write:
                await image.write(at, buf)
            else:
                await image.read_into(at, buf)

    cpu0, t0 = _cpu(), time.perf_counter()
    per = count // depth
    await asyncio.gather(*(one(bufs[i], per) for i in range(depth)))
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    done = per * depth
    return done / seconds, 1000 * cpu / done


def native_run(
    cluster: CephCluster,
    write: bool,
    bs: int,
    depth: int,
    count: int,
    cache: bool = True,
    random: bool = False,
) -> float:
    extra = () if cache else ("--rbd-cache=false",)
    out = cluster.rbd(*extra, "bench", "--io-type", "write" if write else "read",
                      "--io-size", str(bs), "--io-threads", str(depth),
                      "--io-total", str(count * bs), "--io-pattern", "rand" if random else "seq",
                      "rbd/bench",
                      timeout=600)  # fmt: skip
    for line in out.splitlines():
        if line.startswith("elapsed:"):
            return float(line.split("ops/sec:")[1].split()[0])
    raise RuntimeError(out[-300:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="MiB")
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"of {', '.join(CASES)}")
    parser.add_argument("--objectstore", default="bluestore")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--cache", choices=("none", "writearound", "writeback"), default="none",
                        help="the store's librbd cache (docs/rbd.md)")  # fmt: skip
    parser.add_argument("--native-cache", choices=("default", "none"), default="default",
                        help="rbd bench: librbd's default (writearound), or none")  # fmt: skip
    args = parser.parse_args()
    import uvloop

    size = args.size * MiB
    with (
        tempfile.TemporaryDirectory(prefix="targetd-rbd-store-") as tmp,
        CephCluster(Path(tmp) / "ceph", objectstore=args.objectstore) as cluster,
    ):
        cluster.rbd("create", "--size", f"{args.size}M", "rbd/bench")
        native_run(cluster, True, MiB, 16, size // MiB)
        spec = RbdSpec(pool="rbd", image="bench", ceph_conf=str(cluster.conf),
                       cache=args.cache)  # fmt: skip
        image = RbdImage(spec)
        profiler = cProfile.Profile() if args.profile else None
        rows = []
        try:
            for name in args.cases.split(","):
                write, bs, depth, random = CASES[name]
                count = 768 if bs >= MiB else 30_000
                ours: list[float] = []
                cpus: list[float] = []
                native: list[float] = []
                for _ in range(args.repeat):
                    if profiler:
                        profiler.enable()
                    iops, cpu = uvloop.run(store_run(image, write, bs, depth, count, size, random))
                    if profiler:
                        profiler.disable()
                    ours.append(iops)
                    cpus.append(cpu)
                    native.append(native_run(cluster, write, bs, depth, count,
                                             args.native_cache == "default", random))  # fmt: skip
                    print(f"  {name:<12} store {iops:>10,.0f}/s  native {native[-1]:>10,.0f}/s"
                          f"  cpu {cpu:.4f} s/kIO", file=sys.stderr, flush=True)  # fmt: skip
                rows.append((name, bs, statistics.median(ours), statistics.median(native),
                             statistics.median(cpus)))  # fmt: skip
        finally:
            image.close()
        if profiler:
            profiler.dump_stats(args.profile)
    print(f"{'case':<12} {'unit':<5} {'store':>10} {'native':>10} {'ratio':>6} {'cpu s/kIO':>10}")
    for name, bs, ours_m, native_m, cpu_m in rows:
        scale = bs / 1e6 if bs >= MiB else 1
        unit = "MB/s" if bs >= MiB else "IOPS"
        print(f"{name:<12} {unit:<5} {ours_m * scale:>10,.1f} {native_m * scale:>10,.1f} "
              f"{ours_m / native_m:>6.2f} {cpu_m:>10.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
