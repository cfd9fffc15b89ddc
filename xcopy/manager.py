"""The copy manager: copy operations by I_T nexus and list identifier, their progress and
their results, for one SCSI target (the LUN map its sessions see).

An operation is registered under (initiator port, list identifier) unless its LIST ID
USAGE is 11b. A second EXTENDED COPY with the list identifier of a live operation gets
OPERATION IN PROGRESS (00/16); one whose earlier namesake has finished replaces it.
Results stay until RECEIVE COPY RESULTS has reported the end of the operation (and, for
a failure, its FAILED SEGMENT DETAILS), or until ``MAX_RETAINED_RESULTS`` newer ones
push them out. At most ``MAX_CONCURRENT_COPIES`` run at once (INSUFFICIENT RESOURCES,
55/03, past that).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from backing.threads import outlast
from scsi.command import Nexus
from scsi.logical_unit import LogicalUnit
from scsi.sense import CheckCondition, Reason, build_sense
from xcopy import limits
from xcopy.digests import Digests
from xcopy.engine import CopyRun
from xcopy.errors import CopyAborted
from xcopy.journal import CopyJournal
from xcopy.params import CopyList
from xcopy.plan import plan
from xcopy.readers import ReaderFactory, direct_reader
from xcopy.shared import SharedCopies

log = logging.getLogger(__name__)

# How often a running copy's progress is recorded between segment ends (seconds).
CHECKPOINT_INTERVAL = 0.2
# How often, at most, a running copy's progress is written to the cluster's copy records.
SHARED_PROGRESS_INTERVAL = 1.0


class State(enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


@dataclass
class Operation:
    """One EXTENDED COPY, live or finished."""

    initiator: str
    copy_list: CopyList
    lun: int
    state: State = State.RUNNING
    segments_processed: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    sense: bytes | None = None  # how it failed (COPY ABORTED ...), fixed format
    failed_segment: int | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    lost: bool = False  # declared failed by a peer gateway (xcopy/shared.py)
    copy_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # this run, everywhere
    status_reported: int = 0  # operation counter for RECEIVE COPY STATUS(LID4)
    saved: tuple[int, int] = (0, 0)  # (segments, bytes) last recorded in the journal
    # The journal write of the latest record (None: none pending, or no journal).
    recorded: asyncio.Future[None] | None = field(default=None, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    touches: frozenset[int] = frozenset()  # id() of every LU its segments name
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # Set once an IMMED copy may be answered: its split (if any) taken, its sources checked.
    answered: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # The cluster's copy records of the RBD LUs it names (xcopy/shared.py): every gateway
    # exporting them can report it. ``peer``: a copy another gateway ran, read from them.
    shared: tuple[SharedCopies, ...] = ()
    peer: bool = False
    shared_at: float = 0.0
    shared_segments: int = 0
    published: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def list_id(self) -> int:
        return self.copy_list.list_id

    @property
    def finished(self) -> bool:
        return self.state is not State.RUNNING


@dataclass
class Counters:
    started: int = 0
    completed: int = 0
    failed: int = 0
    aborted: int = 0
    bytes: int = 0


class CopyManager:
    def __init__(
        self,
        reader_factory: ReaderFactory = direct_reader,
        *,
        max_concurrent: int = limits.MAX_CONCURRENT_COPIES,
        journal: CopyJournal | None = None,
    ) -> None:
        self.reader_factory = reader_factory
        self.max_concurrent = max_concurrent
        self.operations: dict[str, OrderedDict[int, Operation]] = {}
        self.counters = Counters()
        self._tape_locks: dict[int, asyncio.Lock] = {}
        self.digests = Digests()  # backups' running SHA-256, across their lists
        self._removals: set[asyncio.Task[None]] = set()
        self.journal = journal
        if journal is not None:
            self._recover(journal)

    # -- persistence ---------------------------------------------------------------------
    def _save(self, op: Operation, *, progress_only: bool = False) -> None:
        if op.shared and not op.peer and op.copy_list.keeps_results:
            now = time.monotonic()
            # Every segment end; within a long segment, once per SHARED_PROGRESS_INTERVAL.
            if (
                not progress_only
                or op.segments_processed != op.shared_segments
                or now - op.shared_at >= SHARED_PROGRESS_INTERVAL
            ):
                op.shared_at, op.shared_segments = now, op.segments_processed
                op.published = asyncio.get_running_loop().create_task(
                    self._publish(op, self._record(op), op.published)
                )
        if self.journal is None or not op.copy_list.keeps_results:
            return
        record = self._record(op)
        if progress_only:
            self.journal.progress(record)
        else:
            op.recorded = self.journal.save(record)

    async def _publish(
        self, op: Operation, record: dict[str, Any], after: asyncio.Task[None] | None
    ) -> None:
        """Write ``record`` to the cluster's copy records, after the one before it. If a
        peer gateway declared the copy failed meanwhile, the copy stops here too."""
        if after is not None:
            await asyncio.gather(after, return_exceptions=True)
        for shared in op.shared:
            try:
                ours = await shared.publish(record)
            except (OSError, ValueError) as err:
                log.error("copy list %d: record not kept in %s: %s", op.list_id,
                          shared.obj.name, err)  # fmt: skip
                continue
            if not ours and not op.finished:
                log.warning("copy list %d was declared failed by another gateway", op.list_id)
                op.lost = True
                self.abort(op)

    async def lookup_shared(
        self, lus: list[LogicalUnit], nexus: Nexus, list_id: int
    ) -> Operation | None:
        """A copy this gateway does not know, as another gateway recorded it in the cluster
        (a finished one is kept here until reported; a running one is only a snapshot)."""
        stores = {id(s): s for lu in lus if (s := getattr(lu, "copy_records", None)) is not None}
        if self._removals:  # a result reported just before is not found again
            await asyncio.gather(*self._removals, return_exceptions=True)
        for store in stores.values():
            try:
                r = await store.lookup(nexus.initiator_port, list_id)
            except (OSError, ValueError) as err:
                log.error("copy records in %s unreadable: %s", store.obj.name, err)
                continue
            if r is None:
                continue
            copy_list = CopyList(
                r["service_action"], r["list_id"], r["list_id_usage"], 0, r["immed"], r["g_sense"]
            )
            op = Operation(nexus.initiator_port, copy_list, r["lun"], State(r["state"]))
            op.segments_processed = r["segments_processed"]
            op.bytes_done = r["bytes_done"]
            op.sense = bytes.fromhex(r["sense"]) if r["sense"] else None
            # Removed, once reported, from every LU's records (a copy is kept in each RBD
            # LU it names).
            op.shared, op.peer = tuple(stores.values()), True
            if op.state is State.RUNNING:
                return op
            op.ended = time.monotonic()
            if op.state is State.FAILED:
                op.failed_segment = op.segments_processed
            op.answered.set()
            op.done.set()
            self._register(op)
            return op
        return None

    @staticmethod
    def _record(op: Operation) -> dict[str, Any]:
        cl = op.copy_list
        return {
            "initiator": op.initiator,
            "list_id": cl.list_id,
            "service_action": cl.service_action,
            "list_id_usage": cl.list_id_usage,
            "immed": cl.immed,
            "g_sense": cl.g_sense,
            "lun": op.lun,
            "state": op.state.value,
            "segments_processed": op.segments_processed,
            "bytes_done": op.bytes_done,
            "sense": op.sense.hex() if op.sense else None,
            "copy": op.copy_id,
        }

    def _recover(self, journal: CopyJournal) -> None:
        for r in journal.load():
            copy_list = CopyList(
                r["service_action"], r["list_id"], r["list_id_usage"], 0, r["immed"], r["g_sense"]
            )
            op = Operation(r["initiator"], copy_list, r["lun"], State(r["state"]))
            op.segments_processed = r["segments_processed"]
            op.bytes_done = r["bytes_done"]
            op.sense = bytes.fromhex(r["sense"]) if r["sense"] else None
            op.ended = time.monotonic()
            if op.state is State.RUNNING:  # the daemon died under it
                op.state = State.FAILED
                op.sense = CopyAborted(
                    Reason.COPY_ABORTED_BY_RESTART, op.segments_processed
                ).sense()
                op.failed_segment = op.segments_processed
                log.warning(
                    "copy list %d of %s was interrupted by a restart after %d segments, %d bytes",
                    op.list_id,
                    op.initiator,
                    op.segments_processed,
                    op.bytes_done,
                )
                self._save(op)
            op.answered.set()
            op.done.set()
            self.operations.setdefault(op.initiator, OrderedDict())[op.list_id] = op

    # -- bookkeeping ---------------------------------------------------------------------
    def running(self) -> list[Operation]:
        return [op for ops in self.operations.values() for op in ops.values() if not op.finished]

    def find(self, nexus: Nexus, list_id: int) -> Operation | None:
        return self.operations.get(nexus.initiator_port, OrderedDict()).get(list_id)

    async def durable(self, op: Operation) -> None:
        """The latest record of ``op`` is on stable storage: an EXTENDED COPY is answered
        only once the copy is known to the journal, so a power cut cannot make the target
        forget a copy it acknowledged."""
        if op.recorded is not None:
            with contextlib.suppress(OSError):  # logged by the journal; the copy goes on
                await outlast(op.recorded)
        if op.published is not None:
            await asyncio.gather(asyncio.shield(op.published), return_exceptions=True)

    def forget(self, op: Operation) -> None:
        ops = self.operations.get(op.initiator)
        if ops is not None and ops.get(op.list_id) is op:
            del ops[op.list_id]
            if self.journal is not None:
                self.journal.remove(op.initiator, op.list_id)
            for shared in op.shared:
                task = asyncio.get_running_loop().create_task(
                    shared.remove(op.initiator, op.list_id)
                )
                self._removals.add(task)
                task.add_done_callback(self._removals.discard)

    def _register(self, op: Operation) -> None:
        ops = self.operations.setdefault(op.initiator, OrderedDict())
        ops.pop(op.list_id, None)
        ops[op.list_id] = op
        self._save(op)
        finished = [k for k, o in ops.items() if o.finished]
        for key in finished[: max(0, len(ops) - limits.MAX_RETAINED_RESULTS)]:
            self.forget(ops[key])

    # -- starting ------------------------------------------------------------------------
    def start(self, copy_list: CopyList, lu: LogicalUnit, lun: int, nexus: Nexus) -> Operation:
        """Check and plan ``copy_list``, then run it in the background.

        Raises CheckCondition for a refused list; a planning failure (COPY ABORTED) is
        raised too, and recorded as the operation's result.
        """
        if copy_list.keeps_results:
            live = self.find(nexus, copy_list.list_id)
            if live is not None and not live.finished:
                raise CheckCondition(Reason.OPERATION_IN_PROGRESS)
        if len(self.running()) >= self.max_concurrent:
            raise CheckCondition(Reason.INSUFFICIENT_RESOURCES)
        op = Operation(nexus.initiator_port, copy_list, lun)
        try:
            # The LUs of the target the command came through (LUNs added later too).
            steps = plan(copy_list, lu.lun_map or {lun: lu}, lu, nexus)
        except CopyAborted as err:
            self._finish(op, err)
            if copy_list.keeps_results:
                self._register(op)
            raise
        op.bytes_total = sum(s.length for s in steps)
        named = {
            id(end.lu): end.lu
            for s in steps
            for end in (s.source, s.destination)
            if end is not None and end.lu is not None
        }
        op.touches = frozenset(named)
        op.shared = tuple(
            {id(r): r for u in named.values() if (r := getattr(u, "copy_records", None))}.values()
        )
        if copy_list.keeps_results:
            self._register(op)
        self.counters.started += 1
        log.debug(
            "EXTENDED COPY %s list %d from %s: %d segments, %d bytes",
            "LID1" if copy_list.service_action == 0 else "LID4",
            copy_list.list_id,
            nexus.initiator_port,
            len(steps),
            op.bytes_total,
        )
        run = CopyRun(
            copy_list,
            steps,
            self.reader_factory,
            nexus,
            op,
            lambda: self._checkpoint(op),
            digests=self.digests,
        )
        tapes = {
            id(end.lu)
            for step in steps
            for end in (step.source, step.destination)
            if end is not None and getattr(end.lu, "device_type", 0) == 0x01
        }
        # Taken in one order by every copy, so two copies to two tapes cannot deadlock.
        locks = [self._tape_locks.setdefault(key, asyncio.Lock()) for key in sorted(tapes)]
        op.task = asyncio.get_running_loop().create_task(self._run(op, run, locks))
        return op

    def _checkpoint(self, op: Operation) -> None:
        """Record a running copy's progress (segments processed, bytes moved), so that
        after a crash RECEIVE COPY RESULTS reports what landed, not zero. Counters move
        only once their bytes are written, so a record never claims more than landed."""
        if self.journal is None or op.finished:
            return
        if op.segments_processed >= len(op.copy_list.segments):
            return  # the end is recorded next, when the copy finishes
        mark = (op.segments_processed, op.bytes_done)
        if mark != op.saved:
            op.saved = mark
            self._save(op, progress_only=True)

    async def _checkpoints(self, op: Operation) -> None:
        """Between segment ends (a long segment), progress is recorded every
        CHECKPOINT_INTERVAL seconds."""
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            self._checkpoint(op)

    async def _run(self, op: Operation, run: CopyRun, locks: list[asyncio.Lock]) -> None:
        error: CopyAborted | None = None
        held: list[asyncio.Lock] = []
        checkpoints = (
            asyncio.create_task(self._checkpoints(op))
            if self.journal is not None and op.copy_list.keeps_results
            else None
        )
        try:
            for lock in locks:  # one copy at a time per tape: records must not interleave
                await lock.acquire()
                held.append(lock)
            await run.run(op.answered)
            if op.shared:  # still ours? (not declared failed by a peer while this one stalled)
                op.published = asyncio.get_running_loop().create_task(
                    self._publish(op, self._record(op), op.published)
                )
                await asyncio.shield(op.published)
                if op.lost:
                    raise asyncio.CancelledError
        except CopyAborted as err:
            error = err
        except asyncio.CancelledError:
            if op.lost:  # a peer reported it failed: so does this gateway, the same way
                error = CopyAborted(Reason.COPY_TARGET_DEVICE_NOT_REACHABLE, op.segments_processed)
            else:
                op.state = State.ABORTED
        except Exception as err:  # a bug must still end the operation, visibly
            log.exception("copy list %d failed", op.list_id)
            error = CopyAborted(Reason.THIRD_PARTY_DEVICE_FAILURE, op.segments_processed)
            error.__cause__ = err
        finally:
            if checkpoints is not None:
                checkpoints.cancel()
            for lock in held:
                lock.release()
            self._finish(op, error)

    def _finish(self, op: Operation, error: CopyAborted | None) -> None:
        if op.ended is not None:
            return
        op.ended = time.monotonic()
        self.counters.bytes += op.bytes_done
        if op.state is State.ABORTED:
            op.sense = build_sense(Reason.COMMAND_ABORTED)
            self.counters.aborted += 1
        elif error is not None:
            op.state = State.FAILED
            op.sense = error.sense()
            op.failed_segment = error.segment
            self.counters.failed += 1
            log.info("copy list %d aborted at segment %d: %s", op.list_id, error.segment, error)
        else:
            op.state = State.COMPLETED
            self.counters.completed += 1
        if self.find_op(op) is op:
            self._save(op)
        op.answered.set()
        op.done.set()

    def find_op(self, op: Operation) -> Operation | None:
        return self.operations.get(op.initiator, OrderedDict()).get(op.list_id)

    def abort(self, op: Operation) -> None:
        """COPY OPERATION ABORT (or the EXTENDED COPY's own task was aborted)."""
        if op.task is not None and not op.task.done():
            op.task.cancel()

    async def wait(self, op: Operation) -> None:
        """Until ``op`` ends; if the waiter is cancelled (ABORT TASK), so is the copy."""
        try:
            await op.done.wait()
        except asyncio.CancelledError:
            self.abort(op)
            raise

    def abort_from(self, initiator_port: str) -> None:
        """The I_T nexus lost its access (a reload took its initiator off the ACL, or its
        target away): its running copies stop at their next chunk, as its commands do."""
        for op in self.running():
            if op.initiator == initiator_port:
                self.abort(op)

    async def stop_touching(self, lus: list[LogicalUnit]) -> None:
        """Abort every running copy that names one of ``lus`` and wait for it to end
        (before those LUs are closed: a copy must not outlive its files)."""
        ids = {id(lu) for lu in lus}
        for lu in lus:  # an id() may be reused by the next LU: no digest may outlive its LU
            self.digests.drop_lu(lu)
        stopping = [op for op in self.running() if op.touches & ids]
        for op in stopping:
            self.abort(op)
        for op in stopping:
            if op.task is not None:
                await asyncio.gather(op.task, return_exceptions=True)

    async def close(self) -> None:
        """Daemon shutdown: abort what runs and wait for it to stop."""
        running = self.running()
        for op in running:
            self.abort(op)
        for op in running:
            if op.task is not None:
                await asyncio.gather(op.task, return_exceptions=True)
