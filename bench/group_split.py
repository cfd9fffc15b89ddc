"""Consistency group split acknowledgement, in process on the engine (SparseFile volumes,
real pair files and groups file, their ``fdatasync``s).

Four pairs, each with ``--backlog`` bytes of differential (1 GiB by default: the source is
written before the pair is created and the copy is paced to a crawl, so the whole
creation copy set is still there). Measured, side by side in one run:

- ``group split``: ``PairService.split_group`` (every member's phase set at one instant,
  then one split record written and synced; the members' headers follow after the
  answer), then ``resync_group``, repeated;
- ``group split, a header sync per member``: what a group split did before the split
  record, for comparison: every member's phase set at one instant (``Pair.split_now``),
  then the four header slots written concurrently, answered when all are durable;
- ``one pair split``: ``PairService.split`` of a pair in no group, the same way;
- the disk's floor at that moment: one 2 KiB write + ``fdatasync`` in the same directory
  after each round (a split is at least one such sync).

Goal: group split acknowledgement p99 < 5 ms with 4 x 1 GiB of backlog.

    python3 bench/group_split.py                 # 4 x 1 GiB, 200 splits each; ~2 min
    python3 bench/group_split.py --quick         # 4 x 64 MiB, 20 splits
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from latency import pct

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uuid

from backing.pairs import UNCHECKED, PairManager, PairService, PairSettings, PairVolume
from backing.sparse_file import SparseFile

MiB = 1 << 20
PAIRS = 4


async def fill(volume: PairVolume, nbytes: int) -> None:
    block = os.urandom(MiB)
    for off in range(0, nbytes, MiB):
        await volume.write(off, block)


async def measure(tmp: Path, backlog: int, repeat: int) -> dict[str, tuple[list[float], int]]:
    service = PairService(PairManager(tmp, PairSettings(copy_rate=1)))
    volumes = []
    for i in range(2 * PAIRS + 2):
        volume = PairVolume(f"b/lun{i}", SparseFile(tmp / f"lun{i}.img", backlog))
        service.register_volume(volume)
        volumes.append(volume)
    for i in range(PAIRS + 1):  # the last pair is the lone one
        await fill(volumes[2 * i], backlog)
        await service.create(f"p{i}", f"b/lun{2 * i}", f"b/lun{2 * i + 1}", access=UNCHECKED)
    await service.create_group("g", "b", [f"p{i}" for i in range(PAIRS)], access=UNCHECKED)
    out: dict[str, tuple[list[float], int]] = {}
    group: list[float] = []
    headers: list[float] = []
    members = [service.manager.get(f"p{i}", "b") for i in range(PAIRS)]
    lone: list[float] = []
    probe: list[float] = []  # the disk's own floor: one 2 KiB write + fdatasync, same dir
    fd = os.open(tmp / "probe", os.O_WRONLY | os.O_CREAT, 0o600)
    loop = asyncio.get_running_loop()

    def sync_probe() -> float:
        t = time.perf_counter()
        os.pwrite(fd, os.urandom(2048), 0)
        os.fdatasync(fd)
        return time.perf_counter() - t

    dirty_group = sum(m.dirty_chunks for m in service.group_status("g").members)
    dirty_lone = service.status(name=f"p{PAIRS}").dirty_chunks
    for _ in range(repeat):  # interleaved, so both see the same machine
        t = time.perf_counter()
        await service.split_group("g", access=UNCHECKED)
        group.append(time.perf_counter() - t)
        await service.resync_group("g", access=UNCHECKED)
        t = time.perf_counter()
        token, when = uuid.uuid4().hex, time.time()
        for pair in members:
            pair.split_now(when, token)
        await asyncio.gather(*(pair.write_header() for pair in members))
        headers.append(time.perf_counter() - t)
        await service.resync_group("g", access=UNCHECKED)
        t = time.perf_counter()
        await service.split(name=f"p{PAIRS}", access=UNCHECKED)
        lone.append(time.perf_counter() - t)
        await service.resync(name=f"p{PAIRS}", access=UNCHECKED)
        probe.append(await loop.run_in_executor(None, sync_probe))
    os.close(fd)
    out[f"group split, {PAIRS} pairs"] = (group, dirty_group)
    out[f"group split, {PAIRS} pairs, a header sync per member (before)"] = (headers, dirty_group)
    out["one pair split (no group)"] = (lone, dirty_lone)
    out["disk floor: one 2 KiB write + fdatasync"] = (probe, 0)
    await service.stop()
    for volume in volumes:
        volume.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backlog", type=int, default=1024, help="MiB per pair (default 1024)")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    backlog = (64 if args.quick else args.backlog) * MiB
    repeat = 20 if args.quick else args.repeat
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        results = await measure(Path(d), backlog, repeat)
    print("| split of | backlog | dirty chunks | n | ack p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|---|---|---|")
    for label, (times, dirty) in results.items():
        per = f"{backlog // MiB} MiB per pair"
        print(
            f"| {label} | {per} | {dirty} | {len(times)} | {pct(times, 0.5):.2f} ms"
            f" | {pct(times, 0.9):.2f} ms | {pct(times, 0.99):.2f} ms"
            f" | {max(times) * 1e3:.2f} ms |"
        )
    (group, _), (headers, _), (lone, _), _ = results.values()
    print(
        f"\ngroup / header sync per member, p50: {pct(group, 0.5) / pct(headers, 0.5):.2f}x;"
        f" p99: {pct(group, 0.99) / pct(headers, 0.99):.2f}x"
    )
    print(
        f"group / one pair, p50: {pct(group, 0.5) / pct(lone, 0.5):.2f}x;"
        f" p99: {pct(group, 0.99) / pct(lone, 0.99):.2f}x; goal p99 < 5 ms:"
        f" {'met' if pct(group, 0.99) < 5 else 'NOT met'}"
    )


if __name__ == "__main__":
    asyncio.run(main())
