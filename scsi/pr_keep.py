"""Each change of a LU's reservations is decided on the latest state and kept before it is
answered.

Where the state is kept beyond this process is the LU's :class:`~scsi.reservations.PrStore`:
a file in the state directory for APTPL (scsi/pr_file.py), or an object in the Ceph cluster
that every gateway of an RBD LU shares (scsi/pr_cluster.py). :func:`keep` runs one decision
under the LU's PERSISTENT RESERVE OUT lock: with a shared store it first reads the latest
state, and decides again if another gateway changed it meanwhile; the unit attentions and
aborts the decision owes happen only once it is kept. :func:`durable` wraps a PERSISTENT
RESERVE OUT service action (scsi/pr_out.py) in it, :func:`current` a PERSISTENT RESERVE IN
(scsi/pr_in.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from scsi.command import ScsiCommand, ScsiResult, Status
from scsi.sense import CheckCondition, Reason

if TYPE_CHECKING:
    from scsi.logical_unit import LogicalUnit

# The name the reservations' log lines have always had.
log = logging.getLogger("scsi.reservations")

CONFLICT = ScsiResult(Status.RESERVATION_CONFLICT)

ProutHandler = Callable[["LogicalUnit", ScsiCommand], Coroutine[Any, Any, ScsiResult]]


PROUT_ATTEMPTS = 8  # decided again at most this often when other gateways keep winning


Decision = Callable[[], Coroutine[Any, Any, ScsiResult]]


async def keep(lu: LogicalUnit, decide: Decision) -> ScsiResult:
    """Run ``decide`` on the store's latest state (under the LU's PROUT lock) and keep what
    it changed in the store before answering; undo it and fail when it cannot be kept, or
    decide again when another gateway changed the store first. The unit attentions and
    aborts it owes happen only once it is kept."""
    state = lu.reservations
    async with state.lock:
        for _ in range(PROUT_ATTEMPTS):
            if state.store is not None:
                await state.store.refresh(lu)
            state.owed, state.aborts = [], []
            before = state.snapshot()
            try:
                result = await decide()
            except CheckCondition:
                state.restore(before)
                raise
            owed, state.owed = state.owed, []
            aborts, state.aborts = state.aborts, []
            changed = state.snapshot() != before
            if changed and state.store is not None:
                try:
                    kept = await state.store.commit(lu, before[3], owed, aborts)
                except BaseException:
                    state.restore(before)
                    raise
                if not kept:  # another gateway changed it first: decide again
                    state.restore(before)
                    continue
            state.deliver(lu, owed)
            if aborts and lu.abort_tasks is not None:
                await lu.abort_tasks(state.nexuses_of(lu, aborts))
            return result
        log.error("%s: PERSISTENT RESERVE OUT kept losing to other gateways", lu.identity)
        raise CheckCondition(Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE)


def durable(handler: ProutHandler) -> ProutHandler:
    """One PROUT at a time per LU, decided on the store's latest state and kept there
    before it is acknowledged (:func:`keep`). A RESERVE(6) that another gateway's nexus
    took meanwhile (the copy this gateway checked before was older) is still a conflict."""

    @functools.wraps(handler)
    async def run(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
        async def decide() -> ScsiResult:
            legacy = lu.reservations.legacy
            if legacy is not None and legacy != cmd.nexus:
                return CONFLICT
            return await handler(lu, cmd)

        return await keep(lu, decide)

    return run


def current(handler: ProutHandler) -> ProutHandler:
    """A PERSISTENT RESERVE IN answers from the store's latest state."""

    @functools.wraps(handler)
    async def run(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
        state = lu.reservations
        if state.store is None:
            return await handler(lu, cmd)
        async with state.lock:
            await state.store.refresh(lu)
            return await handler(lu, cmd)

    return run
