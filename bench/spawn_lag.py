"""How long a portal's event loop stands still while it starts a worker process.

uvloop's ``create_subprocess_exec`` (what the portal used) forks on the loop's thread and
waits there for the child's exec; ``targetd.spawn.spawn`` (what it uses now) starts the
child from a worker thread. The fork's cost grows with the parent's memory, so the parent
here holds ``--rss`` MiB (touched pages, as a portal's heap). For each way and size: the
median time a spawn takes as the caller sees it, and the loop's worst and 99th-percentile
lag measured by a 1 ms ticker meanwhile, with the ratio of the worst lags.

    python3 bench/spawn_lag.py                 # 50 and 500 MiB, 20 spawns each way
    python3 bench/spawn_lag.py --rss 1000 --spawns 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from targetd.spawn import spawn

CHILD = [sys.executable, "-c", "import sys; sys.stdin.read()"]  # ends when stdin closes


async def ticker(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - began - 0.001)


async def measure(way: str, spawns: int) -> tuple[float, float, float]:
    lags: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(lags, stop))
    await asyncio.sleep(0.05)
    took: list[float] = []
    for _ in range(spawns):
        began = time.perf_counter()
        if way == "uvloop":
            proc = await asyncio.create_subprocess_exec(
                *CHILD, stdin=asyncio.subprocess.PIPE, start_new_session=True
            )
            took.append(time.perf_counter() - began)
            assert proc.stdin is not None
            proc.stdin.close()
            await proc.wait()
        else:
            child = await spawn(CHILD, env=os.environ)
            took.append(time.perf_counter() - began)
            child._popen.stdin.close()  # type: ignore[union-attr]
            await child.wait()
        await asyncio.sleep(0.02)
    stop.set()
    await tick
    lags.sort()
    return statistics.median(took), lags[-1], lags[int(len(lags) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rss", type=int, nargs="+", default=[50, 500], help="MiB held")
    parser.add_argument("--spawns", type=int, default=20)
    args = parser.parse_args()
    print(f"{'RSS MiB':>8} {'way':>8} {'spawn p50 ms':>13} {'lag max ms':>11} "
          f"{'lag p99 ms':>11} {'max vs uvloop':>14}")  # fmt: skip
    for rss in args.rss:
        ballast = bytearray(rss << 20)
        ballast[::4096] = b"x" * len(ballast[::4096])  # every page touched: really held
        worst: dict[str, float] = {}
        for way in ("uvloop", "thread"):
            p50, most, p99 = uvloop.run(measure(way, args.spawns))
            worst[way] = most
            ratio = f"{most / worst['uvloop']:.2f}x"
            print(f"{rss:>8} {way:>8} {p50 * 1e3:>13.1f} {most * 1e3:>11.1f} "
                  f"{p99 * 1e3:>11.1f} {ratio:>14}")  # fmt: skip
        del ballast


if __name__ == "__main__":
    main()
