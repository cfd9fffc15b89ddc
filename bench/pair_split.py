"""Volume pair benchmark, in process on the engine (SparseFile volumes, real pair files).

1. Split acknowledgement time with 0, 256 MiB and 1 GiB of differential backlog (the
   backlog is kept by pacing the copy to a crawl): ``await manager.split()``, repeated.
2. Host 4 KiB random write latency (through ``PairVolume.write``, write-intent sync
   included), one write at a time: unpaired; paired while the creation copy runs; paired
   and idle (DUPLEX, nothing to copy but each write's own update copy) over the whole
   volume just after the copy, over chunks untouched for > 2 clear_delay periods (cold:
   each write must sync its bit), and over a warmed 64 MiB working set.

    python3 bench/pair_split.py              # 0 / 256 MiB / 1 GiB, ~1 min
    python3 bench/pair_split.py --quick      # 0 / 64 MiB, seconds
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


def volumes(
    tmp: Path, size: int, settings: PairSettings
) -> tuple[PairManager, PairVolume, PairVolume]:
    manager = PairManager(tmp, settings)
    src = PairVolume("b/lun0", SparseFile(tmp / "src.img", size))
    tgt = PairVolume("b/lun1", SparseFile(tmp / "tgt.img", size))
    manager.register_volume(src)
    manager.register_volume(tgt)
    return manager, src, tgt


async def fill(volume: PairVolume, nbytes: int) -> None:
    block = os.urandom(MiB)
    for off in range(0, nbytes, MiB):
        await volume.write(off, block)


async def split_times(backlog: int, repeat: int) -> tuple[list[float], int]:
    size = max(backlog, 64 * MiB)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        manager, src, tgt = volumes(Path(d), size, PairSettings(copy_rate=1))
        await fill(src, backlog)  # unpaired: the creation copy set is this data
        await manager.create("p", "b/lun0", "b/lun1")
        dirty = manager.status("p").dirty_chunks
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            await manager.split("p")
            times.append(time.perf_counter() - t)
            await manager.resync("p")
        await manager.stop()
        src.close()
        tgt.close()
        return times, dirty


async def write_latency(size: int, count: int) -> dict[str, list[float]]:
    """4 KiB random write latencies, one write at a time, in the cases of the table."""
    rng = random.Random(1)
    out: dict[str, list[float]] = {}
    settings = PairSettings()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        manager, src, tgt = volumes(Path(d), size, settings)
        await fill(src, size)
        block = os.urandom(4096)
        chunks = size // settings.chunk_size

        async def write_at(chunk: int) -> float:
            off = chunk * settings.chunk_size + rng.randrange(settings.chunk_size // 4096) * 4096
            t = time.perf_counter()
            await src.write(off, block)
            return time.perf_counter() - t

        async def measure(label: str, among: int, n: int = count) -> None:
            out[label] = [await write_at(rng.randrange(among)) for _ in range(n)]

        await measure("unpaired", chunks)
        await manager.create("p", "b/lun0", "b/lun1")
        await measure("background copy running (creation copy)", chunks)
        copying = manager.status("p").phase.name
        await manager.wait("p", VolumeState.DUPLEX, timeout=600)
        await asyncio.sleep(1.5)
        await measure("idle DUPLEX, whole volume, 1.5 s after the copy", chunks)
        # Every held bit reaches the disk cleared after two clear_delay periods.
        await asyncio.sleep(2 * settings.clear_delay + 2 * settings.lazy_commit)
        order = rng.sample(range(chunks), min(count, chunks))
        out["idle DUPLEX, cold: first write to a chunk in > 10 s"] = [
            await write_at(c) for c in order
        ]
        hot = min(chunks, 64 * MiB // settings.chunk_size)
        await asyncio.sleep(2 * settings.clear_delay + 2 * settings.lazy_commit)
        for c in range(hot):  # warm up: each chunk of the working set written once
            await write_at(c)
        await measure("idle DUPLEX, 64 MiB working set (warmed)", hot)
        out["_copying_phase"] = [0.0] if copying == "DUPLEX_PENDING" else []
        out["_resets"] = [float(manager.get("p").journal.resets_without_sync)]
        await manager.stop()
        src.close()
        tgt.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    backlogs = [0, 64 * MiB] if args.quick else [0, 256 * MiB, 1024 * MiB]
    print("| backlog | dirty chunks | split ack p50 | p99 | max |")
    print("|---|---|---|---|---|")
    for backlog in backlogs:
        times, dirty = await split_times(backlog, 10 if args.quick else 30)
        print(
            f"| {backlog // MiB} MiB | {dirty} | {pct(times, 0.5):.2f} ms"
            f" | {pct(times, 0.99):.2f} ms | {max(times) * 1e3:.2f} ms |"
        )
    size = 64 * MiB if args.quick else 512 * MiB
    lat = await write_latency(size, 300 if args.quick else 2000)
    copying = bool(lat.pop("_copying_phase"))
    resets = int(lat.pop("_resets")[0])
    print()
    print(f"| 4 KiB random writes, {size // MiB} MiB source | n | p50 | p99 | max |")
    print("|---|---|---|---|---|")
    for label, values in lat.items():
        print(
            f"| {label} | {len(values)} | {pct(values, 0.5):.3f} ms"
            f" | {pct(values, 0.99):.3f} ms | {max(values) * 1e3:.3f} ms |"
        )
    print(f"(writes that set a held bit again without a sync: {resets})")
    if not copying:
        print("(the creation copy finished before the measurement ended)")


if __name__ == "__main__":
    asyncio.run(main())
