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

An LU whose acknowledged writes are all in the cluster already (``cache = "none"``: librbd
completes a write only once the OSDs hold it) has nothing acknowledged that depends on its
flush, its lock release or its image's close: the stop waits for each of those steps
``CLUSTER_SECONDS`` at most (they take milliseconds with the cluster there). Past that the
LU is left: one log line names it with the steps not done and what is at risk (nothing),
its later steps are not tried (each would wait out the same timeouts), and the process
exits once the rest has ended, without waiting for librbd. An LU with a librbd cache
(``writeback``, ``writearound``) has acknowledged writes that only its flush puts in the
cluster: its steps are waited for up to ``STOP_SECONDS``, and if they fail or do not end,
the log says which writes are at risk and the exit status is 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from scsi.target import ScsiTarget
from targetd import logs

log = logging.getLogger("targetd")

# From SIGTERM to exit at most (the drain takes up to 2 + 10 + 10 s of it).
STOP_SECONDS = float(os.environ.get("TARGETD_STOP_SECONDS", "40"))
# How long one cluster step of an LU with nothing acknowledged depending on it (cache =
# "none") is waited for before the LU is left (module docstring).
CLUSTER_SECONDS = float(os.environ.get("TARGETD_STOP_CLUSTER_SECONDS", "5"))

# An LU's cluster steps at a stop, in order.
STEPS = ("flush", "lock release", "close")
AT_RISK = ("writes acknowledged from librbd's cache (cache {cache}) and not flushed since"
           " the last SYNCHRONIZE CACHE or FUA write")  # fmt: skip
NOTHING_AT_RISK = "nothing (cache none: the cluster holds every acknowledged write)"
FLUSHED = "nothing (its cache was flushed at the stop, after the last write)"

T = TypeVar("T")


def cluster_cache(lu: Any) -> str | None:
    """The librbd cache mode of an LU in a Ceph cluster (a pair's volume: of its image);
    None for a local LU."""
    store = getattr(lu, "store", None)
    spec = getattr(getattr(store, "base", store), "spec", None)
    cache = getattr(spec, "cache", None)
    return cache if isinstance(cache, str) else None


def at_risk(lu: Any) -> str | None:
    """What an LU in a Ceph cluster loses if its cluster steps are not done (None: a
    local LU)."""
    cache = cluster_cache(lu)
    if cache is None:
        return None
    return NOTHING_AT_RISK if cache == "none" else AT_RISK.format(cache=cache)


class Stopping:
    """What the stop is doing now, and which LUs it still waits for."""

    def __init__(self) -> None:
        self.stage = "draining"
        self.pending: dict[str, str] = {}  # LU -> what it still does ("close", "flush")
        self.started = time.monotonic()
        # LUs left to their cluster (:meth:`step`) -> the step that did not end.
        self.left: dict[str, str] = {}
        self.at_risk: dict[str, str] = {}  # LU -> what it loses if the stop is abandoned

    async def step(self, name: str, lu: Any, what: str, work: Awaitable[T]) -> bool:
        """Run ``what`` (one of :data:`STEPS`) of the LU ``name``; False if the LU was left
        (before or now) and ``work`` is not waited for. Its exception is raised."""
        if name in self.left:
            if asyncio.iscoroutine(work):
                work.close()
            return False
        self.pending[name] = what
        risk = at_risk(lu)
        if risk is not None:
            self.at_risk.setdefault(name, risk)
        try:
            if cluster_cache(lu) != "none":  # a local LU, or acknowledged writes in a cache
                await work
                if what == "flush" and risk is not None:  # the drain ended every write
                    self.at_risk[name] = FLUSHED
                return True
            task = asyncio.ensure_future(work)
            done, _ = await asyncio.wait([task], timeout=CLUSTER_SECONDS)
            if task in done:
                task.result()
                return True
            task.add_done_callback(_after_leaving)
            self.leave(name, lu, what)
            return False
        finally:
            self.pending.pop(name, None)

    def leave(self, name: str, lu: Any, what: str) -> None:
        """Leave the LU ``name`` to its cluster from the step ``what`` on, and say so."""
        self.left[name] = what
        steps = STEPS[STEPS.index(what) :]
        if getattr(getattr(lu, "access_gate", None), "stop", None) is None:
            steps = tuple(s for s in steps if s != "lock release")
        log.warning("cluster work not done at stop", extra=logs.fields(
            lu=name, not_done=", ".join(steps),
            reason=f"the {what} did not end in {CLUSTER_SECONDS:g} s",
            at_risk=at_risk(lu) or "nothing"))  # fmt: skip

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
        risks = "; ".join(f"{lu}: {self.at_risk.get(lu, 'nothing')}" for lu in sorted(self.pending))
        log.error("stop abandoned", extra=logs.fields(after_seconds=seconds,
                  waiting_for=self.describe(), at_risk=risks or "nothing"))  # fmt: skip
        _exit(status)

    def exit_if_left(self, status: int) -> None:
        """With an LU left to its cluster, end the process at once (``status``): its
        librbd calls may still be running, and the interpreter's exit would wait for
        them."""
        if not self.left:
            return
        log.info("stopped", extra=logs.fields(
            left_to_the_cluster=", ".join(sorted(self.left)),
            after_seconds=round(time.monotonic() - self.started, 1)))  # fmt: skip
        _exit(status)


def _exit(status: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(status)


def _after_leaving(task: asyncio.Future[Any]) -> None:
    """A step of a left LU that ends after all: its failure is expected, not news."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("a left LU's step failed", extra=logs.fields(error=str(task.exception())))


def lu_name(target: str, lun: int) -> str:
    return f"{target}/lun{lun}"


async def close_targets(targets: dict[str, ScsiTarget], stopping: Stopping) -> None:
    """Close every LU: those in a Ceph cluster side by side, each on a worker thread (its
    gateway's lock and watch, its image, its reservation and copy records: blocking calls),
    once what they bound to the event loop has left it; local LUs on the loop, as before."""

    async def close(name: str, lu: Any) -> None:
        if name in stopping.left:  # its close would wait out the timeouts its steps did
            return
        try:
            if cluster_cache(lu) is not None:  # in a cluster (a pair's volume too): librbd
                lu.leave_loop()
                await stopping.step(name, lu, "close", asyncio.to_thread(_close_one, lu))
            else:  # a local LU's close is quick, and some of them use the loop
                stopping.pending[name] = "close"
                try:
                    _close_one(lu)
                finally:
                    del stopping.pending[name]
        except Exception:
            log.exception("close failed at shutdown", extra=logs.fields(lu=name))

    await asyncio.gather(*(close(lu_name(t, n), lu) for t, target in targets.items()
                           for n, lu in target.luns.items()))  # fmt: skip


def _close_one(lu: Any) -> None:
    gate = getattr(lu.access_gate, "close", None)
    if gate is not None:  # stop watching before the image closes
        gate()
    close: Callable[[], None] | None = getattr(lu, "close", None)
    if close is not None:
        close()
