"""One primary, 1 to 3 secondaries (1:N), in process on the engine (SparseFile volumes, real
pair files with their fdatasyncs). Host 4 KiB random writes, one at a time, to the primary:

- **mirroring**: every pair DUPLEX with nothing left to copy; *cold* writes go to chunks
  nobody wrote for a while, so each pair's write-intent bit must be synced before the write
  (one sync per pair: the pairs are passed in turn);
- **split, copy-before-write**: every pair SPLIT-PENDING with its whole split set still to
  copy (the background copy paced to a crawl), each write to a chunk not written since the
  split first copies the chunk's old content to every secondary: read once, written N times.

Printed: p50 / p99 per case and N, and the ratio to N = 1.

    python3 bench/pair_fanout.py             # 256 MiB primary, 1000 writes per case
    python3 bench/pair_fanout.py --quick     # 64 MiB, 300 writes
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from latency import pct

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backing.pairs import PairManager, PairSettings, PairVolume, VolumeState
from backing.sparse_file import SparseFile

MiB = 1 << 20


async def run(n: int, size: int, count: int, split: bool) -> list[float]:
    settings = PairSettings(copy_rate=1 if split else 0, clear_delay=0.05, lazy_commit=0.05)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        tmp = Path(d)
        manager = PairManager(tmp, settings)
        vols = [PairVolume(f"b/lun{i}", SparseFile(tmp / f"{i}.img", size)) for i in range(n + 1)]
        for v in vols:
            manager.register_volume(v)
        block = os.urandom(MiB)
        for off in range(0, size, MiB):
            await vols[0].write(off, block)
        names = [f"s{i}" for i in range(n)]
        for i, name in enumerate(names):
            await manager.create(name, "b/lun0", f"b/lun{i + 1}")
        if split:
            for name in names:
                await manager.split(name)
        else:
            wait = 2 * settings.clear_delay + 3 * settings.lazy_commit
            for name in names:
                await manager.wait(name, VolumeState.DUPLEX, timeout=600)
            await asyncio.sleep(wait)  # every bit clear on disk: cold writes
        rng = random.Random(1)
        chunks = size // settings.chunk_size
        order = rng.sample(range(chunks), min(count, chunks))
        data = os.urandom(4096)
        times = []
        for c in order:
            offset = c * settings.chunk_size + rng.randrange(settings.chunk_size // 4096) * 4096
            t = time.perf_counter()
            await vols[0].write(offset, data)
            times.append(time.perf_counter() - t)
            if not split:
                await asyncio.sleep(0)
        await manager.stop()
        for v in vols:
            v.close()
        return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size = (64 if args.quick else 256) * MiB
    count = 250 if args.quick else 1000
    print(f"{'case':34} {'N':>2} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'p50 vs N=1':>10}")
    cases = (("mirroring, cold 4 KiB writes", False), ("split, copy-before-write", True))
    for label, split in cases:
        base = None
        for n in (1, 2, 3):
            times = await run(n, size, count, split)
            p50 = pct(times, 0.5)
            base = base or p50
            print(f"{label:34} {n:>2} {len(times):>5} {p50:8.3f} {pct(times, 0.99):8.3f}"
                  f" {p50 / base:9.2f}x")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
