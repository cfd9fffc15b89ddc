"""The order in which a LU's task set lets commands start: SAM-5 task attributes.

The control mode page says QUEUE ALGORITHM MODIFIER 1 (SIMPLE tasks in any order) and TST
000b (one task set per LU, shared by every I_T nexus). Whatever the QAM, SAM-5 8.6 orders the
other attributes:

* ORDERED starts only once every older task has completed, and no younger SIMPLE (or
  ORDERED) task starts before it has completed;
* HEAD OF QUEUE starts at once, ahead of whatever waits;
* SIMPLE, UNTAGGED and ACA (we never establish an ACA condition, NACA is not changeable) are
  reordered freely, so they only wait behind an ORDERED task.

The common case must cost nothing: :class:`TaskSet` counts the tasks running (``active``)
and the LU's dispatch only looks further when ``gated`` is set (something waits, or an
ORDERED task runs) or the command is ORDERED or HEAD OF QUEUE. A waiting task is an awaited
future: cancelling the command's task (ABORT TASK, LU reset, the nexus gone) takes it out
of the queue and lets those behind it go.
"""

from __future__ import annotations

import asyncio
from collections import deque

from scsi.command import TaskAttribute

ORDERED = TaskAttribute.ORDERED
HEAD_OF_QUEUE = TaskAttribute.HEAD_OF_QUEUE
# ``attribute & BARRIER_BITS`` is non-zero for exactly ORDERED (2) and HEAD OF QUEUE (3).
BARRIER_BITS = 0x02


class TaskSet:
    """Running-task count and the queue of tasks held back by an ORDERED one."""

    __slots__ = ("_ordered_running", "_waiting", "active", "gated")

    def __init__(self) -> None:
        self.active = 0  # tasks started and not yet completed
        self.gated = False  # something waits or an ORDERED task runs: see finished()
        self._ordered_running = False
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _may_start(self, attribute: int) -> bool:
        if self._ordered_running:
            return False
        return attribute != ORDERED or not self.active

    def _started(self, attribute: int) -> None:
        self.active += 1
        if attribute == ORDERED:
            self._ordered_running = True
            self.gated = True

    async def enter(self, attribute: int) -> None:
        """Wait until a task with ``attribute`` may start (the slow path: ORDERED, HEAD OF
        QUEUE, or anything while the set is gated), then count it as running."""
        if attribute == HEAD_OF_QUEUE:
            self.active += 1
            return
        if not self._waiting and self._may_start(attribute):
            self._started(attribute)
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((attribute, fut))
        self.gated = True
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.finished(attribute)  # let in just before the abort: it ran nothing
            else:
                self._release()  # those behind it may go now
            raise

    def finished(self, attribute: int) -> None:
        """A task that :meth:`enter` (or the fast path) counted has completed."""
        self.active -= 1
        if attribute == ORDERED:
            self._ordered_running = False
        self._release()

    def _release(self) -> None:
        waiting = self._waiting
        while waiting:
            attribute, fut = waiting[0]
            if fut.done():  # cancelled while waiting
                waiting.popleft()
                continue
            if not self._may_start(attribute):
                break
            waiting.popleft()
            self._started(attribute)
            fut.set_result(None)
            if attribute == ORDERED:
                break
        self.gated = bool(waiting) or self._ordered_running


__all__ = ["BARRIER_BITS", "TaskSet"]
