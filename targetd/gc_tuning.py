"""The cyclic garbage collector, set for a daemon that allocates per command.

With Python's default (a young-generation pass every 700 net allocations of container
objects) the collector ran every few commands on an RBD LUN, where each command is an
asyncio Task with futures and ctypes objects: about 8% of the event loop's samples in 4 KiB
writes. The daemon's own structures, built at start, are frozen out of every pass, and the
passes come far less often; cycles are still collected, a little later.
"""

from __future__ import annotations

import gc

THRESHOLDS = (20_000, 20, 20)


def tune() -> None:
    """Freeze what exists now (configuration, LUNs, tables) and space the passes out."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
