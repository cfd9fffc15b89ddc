"""Volume pair benchmark, in process on the engine (SparseFile volumes, real pair files).

1. Split acknowledgement time with 0, 256 MiB and 1 GiB of differential backlog (the
   backlog is kept by pacing the copy to a crawl): ``await manager.split()``, repeated.
2. Host 4 KiB random write latency (through ``PairVolume.write``, write-intent sync
   included): unpaired, paired and idle (DUPLEX), and paired during the background copy.

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
    rng = random.Random(1)
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        manager, src, tgt = volumes(Path(d), size, PairSettings())
        await fill(src, size)
        block = os.urandom(4096)

        async def measure(label: str) -> None:
            lat = []
            for _ in range(count):
                off = rng.randrange(size // 4096) * 4096
                t = time.perf_counter()
                await src.write(off, block)
                lat.append(time.perf_counter() - t)
            out[label] = lat

        await measure("unpaired")
        await manager.create("p", "b/lun0", "b/lun1")
        await measure("paired, background copy running")
        copying = manager.status("p").phase.name
        await manager.wait("p", VolumeState.DUPLEX, timeout=600)
        await asyncio.sleep(1.5)  # lazy clears written: first writes to a chunk sync again
        await measure("paired, DUPLEX, idle")
        out["_copying_phase"] = [0.0] if copying == "DUPLEX_PENDING" else []
        await manager.stop()
        src.close()
        tgt.close()
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1e3


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
    print()
    print("| 4 KiB random writes | p50 | p99 |")
    print("|---|---|---|")
    for label, values in lat.items():
        print(f"| {label} | {pct(values, 0.5):.3f} ms | {pct(values, 0.99):.3f} ms |")
    if not copying:
        print("(the creation copy finished before the measurement ended)")


if __name__ == "__main__":
    asyncio.run(main())
