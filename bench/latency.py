"""Latency samples as the pair benchmarks take and report them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of samples in seconds, in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def timed_writes(write: Callable[[int], Awaitable[object]], offsets: list[int]
                       ) -> list[float]:  # fmt: skip
    """One write at each offset in turn (queue depth 1); the seconds each took."""
    out = []
    for off in offsets:
        t = time.perf_counter()
        await write(off)
        out.append(time.perf_counter() - t)
    return out
