"""One client of an RBD image incrementing a counter with compare and write.

    python caw_counter.py CEPH_CONF POOL IMAGE ROUNDS   # prints the increments it made

The Ceph tier runs two of these at once, as two processes with their own connections to
the cluster, the way two gateways would be.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backing.rbd_image import RbdImage, RbdSpec

BLOCK = 512


async def increment(spec: RbdSpec, rounds: int) -> int:
    """Increment the counter in block 0 ``rounds`` times; a miscompare rereads and retries."""
    img = RbdImage(spec)
    try:
        wins = 0
        buf = bytearray(BLOCK)
        await img.read_into(0, memoryview(buf))
        while wins < rounds:
            value = int.from_bytes(buf[:8], "big")
            new = (value + 1).to_bytes(8, "big") + bytes(BLOCK - 8)
            if await img.compare_and_write(0, bytes(buf), new) is None:
                wins += 1
                buf[:] = new
            else:
                await img.read_into(0, memoryview(buf))
        return wins
    finally:
        img.close()


async def read_counter(spec: RbdSpec) -> int:
    img = RbdImage(spec)
    try:
        buf = bytearray(BLOCK)
        await img.read_into(0, memoryview(buf))
        return int.from_bytes(buf[:8], "big")
    finally:
        img.close()


if __name__ == "__main__":
    conf, pool, image, rounds = sys.argv[1:5]
    print(asyncio.run(increment(RbdSpec(pool, image, ceph_conf=conf), int(rounds))))
