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

A READ answered with a file range (sent later with sendfile(2)) has not completed when its
handler returns: its bytes are read from the file's pages when the socket takes them, and
even after ``sendfile`` returns, the kernel's socket buffers (the receiver's too, on
loopback) still point at those pages until the initiator has read them. A write that ran
now would show in the READ's data. So such a task stays counted in the set through a
:class:`Hold` until the transport knows the initiator has the data (it acknowledged the
READ's status) or the connection is gone. Everyone else's fast path is unchanged: only a
task that waits looks at the holds, and asks their transports to get the acknowledgement
soon (:meth:`Hold.on_wanted`) instead of whenever the initiator next sends something.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from scsi.command import TaskAttribute

ORDERED = TaskAttribute.ORDERED
HEAD_OF_QUEUE = TaskAttribute.HEAD_OF_QUEUE
# ``attribute & BARRIER_BITS`` is non-zero for exactly ORDERED (2) and HEAD OF QUEUE (3).
BARRIER_BITS = 0x02


class Hold:
    """A task whose handler is done but whose Data-In the initiator may not have yet: it
    stays in the task set until :meth:`release` (called once the initiator has the data or
    its connection is gone; later calls do nothing)."""

    __slots__ = ("_attribute", "_done", "_nudge", "_task_set", "wanted")

    def __init__(self, task_set: TaskSet, attribute: int) -> None:
        self._task_set: TaskSet | None = task_set
        self._attribute = attribute
        self._nudge: Callable[[], None] | None = None
        self._done: Callable[[], None] | None = None
        self.wanted = False  # a task (or the store's writer) waits while this is held

    def release(self) -> None:
        task_set = self._task_set
        if task_set is None:
            return
        self._task_set = None
        self._nudge = None
        del task_set._holds[self]
        task_set.finished(self._attribute)
        done = self._done
        if done is not None:
            self._done = None
            done()

    def when_released(self, done: Callable[[], None]) -> None:
        """Call ``done`` once, at :meth:`release` (at once if released already)."""
        if self._task_set is None:
            done()
        else:
            self._done = done

    def want(self) -> None:
        """Something outside the task set waits for this READ to complete (the pair engine,
        to write its range of the file): get the initiator's acknowledgement soon."""
        if self._task_set is not None:
            self._want()

    def on_wanted(self, nudge: Callable[[], None]) -> None:
        """The transport's way of getting the initiator's acknowledgement soon (a ping):
        called now if a task already waits, else once one does."""
        if self._task_set is None:
            return
        self._nudge = nudge
        if self.wanted:
            nudge()

    def _want(self) -> None:
        if not self.wanted:
            self.wanted = True
            if self._nudge is not None:
                self._nudge()


class TaskSet:
    """Running-task count and the queue of tasks held back by an ORDERED one."""

    __slots__ = ("_holds", "_ordered_running", "_waiting", "active", "gated")

    def __init__(self) -> None:
        self.active = 0  # tasks started and not yet completed (holds included)
        self.gated = False  # something waits or an ORDERED task runs: see finished()
        self._ordered_running = False
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._holds: dict[Hold, None] = {}  # insertion-ordered set

    def hold(self, attribute: int) -> Hold:
        """The task with ``attribute`` that :meth:`enter` (or the fast path) counted has
        answered, but completes only when the returned hold is released."""
        held = Hold(self, attribute)
        self._holds[held] = None
        if self._waiting:
            held._want()
        return held

    def _want_holds(self) -> None:
        for held in list(self._holds):
            held._want()

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
        if self._holds:
            self._want_holds()
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


__all__ = ["BARRIER_BITS", "Hold", "TaskSet"]
