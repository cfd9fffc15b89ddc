"""A daemon's stop, bounded even when a Ceph cluster is gone (docs/operations.md, "Signals").

Every librbd and librados call is bounded (a monitor operation by its timeout, an OSD
operation by ``osd_op_timeout``), but a stop makes many of them: flushes, the pairs' state,
the gateways' locks and watches, the reservation records, the image closes (which wait for
calls still running). With the cluster out of reach they add up to minutes. So the stop
runs its LUs' flushes and closes side by side, each close on a worker thread (the event
loop never waits on librbd or librados), and the whole stop within ``STOP_SECONDS``: what
has not ended by then is named in the log and abandoned, and the process exits without
waiting for it. Nothing acknowledged is lost by that: with ``cache = "none"`` a write is
acknowledged once it is in the cluster, and with a cache a FUA write or one before a
SYNCHRONIZE CACHE is flushed before its answer; only what a volatile cache held unflushed,
which the cluster cannot take now anyway, is not written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from scsi.target import ScsiTarget
from targetd import logs

log = logging.getLogger("targetd")

# From SIGTERM to exit at most (the drain takes up to 2 + 10 + 10 s of it).
STOP_SECONDS = float(os.environ.get("TARGETD_STOP_SECONDS", "40"))


class Stopping:
    """What the stop is doing now, and which LUs it still waits for."""

    def __init__(self) -> None:
        self.stage = "draining"
        self.pending: dict[str, str] = {}  # LU -> what it still does ("close", "flush")
        self.started = time.monotonic()

    def describe(self) -> str:
        waits = ", ".join(f"{what} of {lu}" for lu, what in sorted(self.pending.items()))
        return f"{self.stage}: {waits}" if waits else self.stage

    async def run(self, stop: Awaitable[Any], seconds: float) -> bool:
        """Run ``stop`` for at most ``seconds`` from the stop's start; False if it had not
        ended (it is left running: the caller exits)."""
        task = asyncio.ensure_future(stop)
        left = max(0.0, self.started + seconds - time.monotonic())
        done, _ = await asyncio.wait([task], timeout=left)
        if task in done:
            task.result()  # its exception, if any
            return True
        return False

    def abandon(self, seconds: float, status: int) -> None:
        """Log what the stop still waits for and end the process at once: a librbd or
        librados call that does not return cannot be stopped, and the interpreter's exit
        would wait for its thread."""
        log.error("stop abandoned", extra=logs.fields(after_seconds=seconds,
                                                      waiting_for=self.describe()))  # fmt: skip
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(status)


def lu_name(target: str, lun: int) -> str:
    return f"{target}/lun{lun}"


async def close_targets(targets: dict[str, ScsiTarget], stopping: Stopping) -> None:
    """Close every LU: those in a Ceph cluster side by side, each on a worker thread (its
    gateway's lock and watch, its image, its reservation and copy records: blocking calls),
    once what they bound to the event loop has left it; local LUs on the loop, as before."""

    async def close(name: str, lu: Any) -> None:
        stopping.pending[name] = "close"
        try:
            if hasattr(getattr(lu, "store", None), "leave_loop"):  # in a cluster: librbd
                lu.leave_loop()
                await asyncio.to_thread(_close_one, lu)
            else:  # a local LU's close is quick, and some of them use the loop
                _close_one(lu)
        except Exception:
            log.exception("close failed at shutdown", extra=logs.fields(lu=name))
        finally:
            del stopping.pending[name]

    await asyncio.gather(*(close(lu_name(t, n), lu) for t, target in targets.items()
                           for n, lu in target.luns.items()))  # fmt: skip


def _close_one(lu: Any) -> None:
    gate = getattr(lu.access_gate, "close", None)
    if gate is not None:  # stop watching before the image closes
        gate()
    close: Callable[[], None] | None = getattr(lu, "close", None)
    if close is not None:
        close()
