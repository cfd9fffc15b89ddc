"""One pair's engine: bitmaps, copy workers, the split, copy-before-write, resync.

Three chunk bitmaps, one bit per chunk (see :mod:`backing.pairs.journal` for the file):

``copy_set``     chunks the target does not have yet. While mirroring, host writes to the
                 source set bits here; at a split it *is* the split-instant set and only
                 shrinks until the target side is SPLIT.
``src_changed``  source chunks written since the split (for RESYNC).
``tgt_changed``  target chunks written since the split (for RESYNC).

Concurrency, per chunk: a copy holds a *ticket* (one copy of a chunk at a time); a host
write counts itself in ``_writers``. While mirroring, host writes never wait for a copy:
a writer that runs at any moment during a copy *spoils* it and the bit stays set for a
later copy. After the split, a host write to a chunk still in the split set first copies
that chunk (copy-before-write), and split-mode copies wait for writers that started
before the split; so a chunk's split-instant content is the only thing ever copied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from backing.pairs.bitmap import ChunkBitmap
from backing.pairs.copier import (
    COPY_SET,
    SRC_CHANGED,
    TGT_CHANGED,
    ChunkCopier,
    _Pacer,
    _reason_of,
    _Ticket,
)
from backing.pairs.journal import PairRecord, WriteIntentLog
from backing.pairs.settings import PairSettings
from backing.pairs.split_snapshot import SPLIT_SNAPSHOT_PREFIX, SplitSnapshot
from backing.pairs.states import (
    BackupPolicy,
    ErrorCode,
    Event,
    PairError,
    Phase,
    SuspendReason,
    next_phase,
)
from backing.pairs.status import PairStatus
from backing.pairs.volume import PairVolume, Role, VolumeWriteProtected

log = logging.getLogger(__name__)

# The phases the other pairs of a primary must be in for one of them to reverse resync:
# neither mirroring it (they would not see the restore) nor reflecting a split set from it.
REVERSE_SIBLING_PHASES = frozenset({Phase.SPLIT, Phase.SUSPENDED})


class Pair(ChunkCopier, SplitSnapshot):
    """A source volume mirrored onto a target volume: its life cycle, its operations and
    the host path (copying: :class:`ChunkCopier`; the split snapshot:
    :class:`SplitSnapshot`)."""

    def __init__(
        self,
        meta: dict[str, Any],
        source: PairVolume,
        target: PairVolume,
        pair_file: PairRecord,
        bitmaps: list[ChunkBitmap],
        settings: PairSettings,
    ) -> None:
        self.name: str = meta["name"]
        self.source = source
        self.target = target
        self.size: int = meta["size"]
        self.chunk_size: int = meta["chunk_size"]
        self.chunks: int = meta["chunks"]
        self.phase = Phase[meta["phase"]]
        self.reason = SuspendReason[meta.get("reason", "NONE")]
        self.error: str | None = meta.get("error")
        self.split_time: float | None = meta.get("split_time")
        # The id of the group split that split this pair (None: split alone, or mirroring):
        # a restart finds a group split that did not reach every member's header by it.
        self.group_split: str | None = meta.get("group_split")
        # The last group split this header has taken in (never cleared by a resync): a
        # restart brings a header that predates its group's last split record up to date.
        self.group_seen: str | None = meta.get("group_seen")
        self.group: str | None = None  # kept by the manager (the group file), not the header
        self.initializing: bool = meta.get("initializing", False)
        policy = meta.get("backup_policy")
        # Set with PAIR OUT SET BACKUP POLICY or targetctl; None follows the settings.
        self.backup_policy: BackupPolicy | None = None if policy is None else BackupPolicy(policy)
        self.settings = settings
        self.file = pair_file
        self.copy_set, self.src_changed, self.tgt_changed = bitmaps
        self.journal = WriteIntentLog(pair_file, bitmaps, self._sync_target_for_clears)
        self._clears_unsynced = False
        self._writers: dict[int, int] = {}
        self._writer_waits: dict[int, asyncio.Event] = {}
        self._tickets: dict[int, _Ticket] = {}
        # Chunks a copy worker chose and has not finished with (its ticket comes once its
        # copy runs): another worker picks another chunk.
        self._claimed: set[int] = set()
        self._work = asyncio.Event()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        # Chunk copies the workers started: a cancelled worker's copy may be on a thread
        # still, and stop() waits for it (nothing of the pair runs once stop returns).
        self._jobs: set[asyncio.Future[None]] = set()
        # Copies waiting, before they write, for READs of the range still being sent: no
        # thread runs for them, so stop() gives them up rather than wait for an initiator.
        self._awaiting_reads: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._header_lock = asyncio.Lock()
        self._cursor = 0
        self._finishing = False
        self._pacer = _Pacer(settings.copy_rate)
        self.copied_bytes = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._merge_unsettled = False
        self._splits = 0  # splits so far in this life (a resync's clearing must not outlive one)
        # The source's split-instant snapshot (an RBD source): its name, kept in the header
        # while it exists, and the open view once host writes may skip copy-before-write.
        self.split_snapshot: str | None = meta.get("split_snapshot")
        self._frozen: Any = None
        self._snapshot_tasks: set[asyncio.Task[None]] = set()
        self._entered: dict[int, int] = {}  # host writes in flight, by the split they began in
        self._entered_changed = asyncio.Event()
        self._freezing_for = 0  # the split whose snapshot is being taken (0: none yet)
        self._taking: str | None = None  # the name of the snapshot being taken
        self._recover()
        self.journal.set_hold(self.phase.mirroring)

    # -- lifecycle ----------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source.volume_id,
            "target": self.target.volume_id,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunks": self.chunks,
            "npages": self.file.npages,
            "phase": self.phase.name,
            "reason": self.reason.name,
            "error": self.error,
            "split_time": self.split_time,
            "group_split": self.group_split,
            "group_seen": self.group_seen,
            "initializing": self.initializing,
            "backup_policy": None if self.backup_policy is None else int(self.backup_policy),
            "split_snapshot": self.split_snapshot,
            # Kept by the manager's groups file; in a record two gateways share, the other
            # gateway learns the pair's group from here (backing/pairs/shared.py).
            "group": self.group,
        }

    def _recover(self) -> None:
        """Make the bitmaps read back from disk mean what the phase says."""
        if self.phase.mirroring or self.phase is Phase.REVERSE_COPY:
            # RESYNC merges lazily on disk: whatever either side changed still needs copying.
            # The changed regions are cleared by start(), once the merge is on disk.
            self.copy_set.update(self.src_changed)
            self.copy_set.update(self.tgt_changed)
            self._merge_unsettled = bool(self.src_changed.count or self.tgt_changed.count)
        elif self.phase is Phase.SPLIT and self.copy_set.count:
            self.phase = Phase.SPLIT_PENDING  # cannot happen (SPLIT is written after a sync)

    def attach(self) -> None:
        self.source.attach(self, Role.SOURCE)
        self.target.attach(self, Role.TARGET)

    async def start(self) -> None:
        """Initialise (creation copy set) if needed, then run the copy workers. A failed
        initialisation leaves the pair SUSPENDED (a resync redoes it), never stalled."""
        self._stopping = False
        if self.initializing:
            try:
                await self._initialize()
            except Exception as err:
                await self._fail(_reason_of(err, SuspendReason.TARGET_WRITE_ERROR), err)
        if self.split_snapshot is not None:
            await self._resume_snapshot()
        await self._remove_stray_snapshots()
        if self._merge_unsettled:
            try:
                await self._settle_merge()
            except Exception as err:  # the changed bits stay on disk: merged again next time
                await self._fail(_reason_of(err, SuspendReason.PAIR_FILE_ERROR), err)
        self._workers = [self._start_worker() for _ in range(self.settings.copy_workers)]
        self._tasks = [
            *self._workers,
            asyncio.ensure_future(self._guarded(self._lazy_committer, "bitmap writer")),
        ]
        self._work.set()

    def _start_worker(self) -> asyncio.Task[None]:
        return asyncio.ensure_future(self._guarded(self._worker, "copy worker"))

    def retune(self, settings: PairSettings) -> None:
        """The daemon's settings changed (a reload): the copy rate, the number of copy
        workers, the lazy clearing period, the configured backup policy and the snapshot
        split apply from now on. The chunk size is the pair's own (its file's)."""
        self.settings = settings
        self._pacer.rate = settings.copy_rate
        if not self._tasks:  # not running here (not started, stopped, or only shown)
            return
        while len(self._workers) < settings.copy_workers:
            worker = self._start_worker()
            self._workers.append(worker)
            self._tasks.append(worker)
        while len(self._workers) > settings.copy_workers:
            # Its chunk copy in flight runs to its end (stop() waits for such copies).
            worker = self._workers.pop()
            self._tasks.remove(worker)
            worker.cancel()
        self._work.set()

    async def fail(self, reason: SuspendReason, err: BaseException) -> None:
        """SUSPENDED because of ``err`` (a write of state the pair relies on failed)."""
        await self._fail(reason, err)

    async def _fail(self, reason: SuspendReason, err: BaseException) -> None:
        """The pair goes SUSPENDED because of ``err``, shown in its status. If even the
        header cannot be written, it is SUSPENDED in memory (and logged)."""
        if self.phase in (Phase.SUSPENDED, Phase.DELETE):
            return
        lost = any(v.lost is not None and v.lost(err) for v in (self.source, self.target))
        if lost or getattr(self.file, "taken", False):
            # This gateway was fenced, or the other claimed the pair's record (two gateways,
            # docs/rbd.md): the pair is not at fault and runs on the other one now; it stops
            # here when the gateway hands it over.
            log.warning("pair %s: not suspended: this gateway was fenced (%s)", self.name, err)
            return
        self.error = f"{type(err).__name__}: {err}"
        log.error("pair %s: SUSPENDED (%s): %s", self.name, reason.name, self.error)
        try:
            await self.suspend(reason)
        except Exception:
            log.exception("pair %s: recording the suspension in its file failed", self.name)
            if self.phase is not Phase.SUSPENDED:
                self.reason = reason
                self._set_phase(Phase.SUSPENDED)

    async def _initialize(self) -> None:
        """The creation copy set: the source's allocated chunks. The target is punched
        whole first, so source holes need no copying. Redone if a crash interrupts it."""
        await self.source.drain()
        await self.target.drain()
        await self.target.unsent(0, self.size)  # READs of it answered before the attach
        await self.target.base.punch_hole(0, self.size)
        cs = self.chunk_size
        for extent in self.source.base.extents(0, self.size):
            if extent.mapped:
                first = extent.offset // cs
                last = (extent.offset + extent.length + cs - 1) // cs
                self.copy_set.set_range(first, last)
        await self.journal.commit()
        self.initializing = False
        await self._write_header()

    async def stop(self) -> None:
        """Stop the workers and write out every cleared bit (clean shutdown). When it
        returns, every bit and header the pair wrote is durable and none of its work runs
        on a thread: the caller may close the pair file and the volumes' stores."""
        tasks = [*self._tasks, *self._snapshot_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        self._workers = []
        # A copy whose worker was cancelled mid-chunk runs to its end (a read or write on a
        # thread cannot be stopped half way; it may still suspend the pair, durably), but
        # one that waits for a READ's initiator has written nothing yet: it is given up.
        self._stopping = True  # (a copy queued behind one of them for its chunk, too)
        for waiting in list(self._awaiting_reads):
            waiting.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._frozen is not None:  # the snapshot stays (named in the header) for a restart
            frozen, self._frozen = self._frozen, None
            await frozen.aclose()
        self.journal.set_hold(False)  # a clean restart recopies nothing
        if self.journal.pending() and not self.file.closed:
            try:
                await self.journal.commit()
            except Exception:
                # Only cleared bits are lost: the next start copies those chunks again.
                log.exception("pair %s: writing the last cleared bits failed", self.name)
        # A commit already on the file's thread (a host write's marks, the bitmap writer's
        # cancelled round) and a header write in flight end before the file may close.
        await self.journal.drain()
        async with self._header_lock:
            self.journal.closed = True

    async def _write_header(self) -> None:
        async with self._header_lock:
            await self.file.commit_header(self.meta())

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        if phase is not Phase.SPLIT_PENDING and (
            self._frozen is not None or self.split_snapshot is not None
        ):
            self._in_background(self._drop_snapshot())
        # Cleared bits may linger on disk only while a stale one costs just a recopy.
        self.journal.set_hold(phase.mirroring)
        self._changed.set()
        self._changed = asyncio.Event()
        self._work.set()
        self.source.changed()
        self.target.changed()

    # -- operations ---------------------------------------------------------------------
    async def split(self) -> None:
        """Answered at once: the copy set becomes the split-instant set, durably."""
        self.split_now(time.time(), None)
        await self.write_header()

    def split_now(self, when: float, group_split: str | None) -> None:
        """The split instant itself, in memory and without awaiting anything: every host
        write that reaches :meth:`host_write` from now on is a post-split write. A group
        splits all its pairs in one such step (one instant for all), then writes the
        headers. Raises PairError (WRONG_STATE) and changes nothing if it may not split."""
        phase = next_phase(self.phase, Event.SPLIT)
        self._splits += 1
        self.split_time = when
        self.group_split = group_split
        if group_split is not None:
            self.group_seen = group_split
        self._set_phase(phase)

    async def write_header(self) -> None:
        """Make the pair's phase durable (after :meth:`split_now`)."""
        await self._write_header()
        if (
            self.phase is Phase.SPLIT_PENDING
            and self.settings.snapshot_split
            and self.copy_set.count
            and self._freezing_for != self._splits
            and getattr(self.source.base, "freeze", None) is not None
        ):
            self._freezing_for = self._splits
            self._in_background(self._freeze_source(self._splits))

    async def resync(self) -> None:
        """Back towards DUPLEX, copying what changed on either side since the split."""
        phase = next_phase(self.phase, Event.RESYNC)
        restoring = next((p for p in self.siblings() if p.phase is Phase.REVERSE_COPY), None)
        if restoring is not None:  # the primary is still being restored from its target
            raise PairError(
                ErrorCode.WRONG_STATE,
                f"pair {self.name}: its primary is being restored from pair {restoring.name}"
                " (reverse resync): resync once that pair is DUPLEX",
                phase=self.phase,
            )
        if self.initializing:  # the creation copy set was never made: make it now
            await self._initialize()
        self.copy_set.update(self.src_changed)
        self.copy_set.update(self.tgt_changed)
        self.reason = SuspendReason.NONE
        self.error = None
        self.split_time = None
        self.group_split = None
        self._set_phase(phase)
        await self._write_header()
        await self._settle_merge()

    async def reverse_resync(self) -> None:
        """Restore the source from the target (a SPLIT pair): copy back every chunk either
        side changed since the split, then DUPLEX. Hosts are fenced from the source while
        it runs (writes: WRITE PROTECTED; reads see the restored image at once). The new
        phase is durable before any chunk moves: a crash before it leaves the pair SPLIT
        with the source untouched."""
        phase = next_phase(self.phase, Event.REVERSE)
        siblings = self.siblings()
        for sibling in siblings:
            if sibling.phase not in REVERSE_SIBLING_PHASES:
                raise PairError(
                    ErrorCode.WRONG_STATE,
                    f"pair {self.name}: its primary {self.source.volume_id} is also in pair"
                    f" {sibling.name}, which is {sibling.phase.target.label}: a reverse resync"
                    " needs every other pair of the primary SPLIT or SUSPENDED",
                    phase=sibling.phase,
                )
        # Every chunk the restore may change on the primary counts as changed since the
        # siblings' splits, durably before any chunk moves: their next resync copies it.
        restore = ChunkBitmap(self.chunks)
        for bitmap in (self.copy_set, self.src_changed, self.tgt_changed):
            restore.update(bitmap)
        await asyncio.gather(*(sibling.mark_source_changed(restore) for sibling in siblings))
        next_phase(self.phase, Event.REVERSE)
        async with self._header_lock:
            await self.file.commit_header({**self.meta(), "phase": phase.name})
        next_phase(self.phase, Event.REVERSE)  # unchanged meanwhile (one op at a time)
        self.copy_set.update(self.src_changed)
        self.copy_set.update(self.tgt_changed)
        self.split_time = None
        self.group_split = None
        self._set_phase(phase)
        await self._write_header()
        await self._settle_merge()

    def siblings(self) -> list[Pair]:
        """The other pairs of this pair's primary (1:N)."""
        return [p for p in self.source.pairs if p is not self]

    async def mark_source_changed(self, chunks: ChunkBitmap) -> None:
        """``chunks`` of the primary will change under this (split or suspended) pair:
        durably marked as changed, so its next resync copies them."""
        for c in chunks:
            self.journal.mark(SRC_CHANGED, c)
        await self.journal.commit()

    async def _settle_merge(self) -> None:
        """Clear the changed regions, already merged into the copy set in memory, only once
        that merge is on disk. In one batch of pages, a power cut before its sync could
        keep the cleared changed bits and lose the copy-set bits that took them over: those
        chunks would never be copied. (While mirroring, new writes mark the copy set.)"""
        splits = self._splits
        await self.journal.commit()
        if self._splits != splits:  # split again meanwhile: its changed bits are new ones
            return  # (the old ones left set cost a recopy at the next resync, nothing more)
        self.src_changed.clear_all()
        self.tgt_changed.clear_all()
        self._merge_unsettled = False

    async def delete(self) -> None:
        next_phase(self.phase, Event.DELETE)
        self._set_phase(Phase.DELETE)
        await self._write_header()
        # The split snapshot goes with the pair (stop() would cancel its removal, and the
        # pair file that names it is about to go).
        await asyncio.gather(*self._snapshot_tasks, return_exceptions=True)
        await self.stop()
        self.source.detach(self)
        self.target.detach(self)
        await self.file.discard()

    async def suspend(self, reason: SuspendReason) -> None:
        phase = next_phase(self.phase, Event.FAIL)
        self.reason = reason
        self._set_phase(phase)
        await self._write_header()

    async def set_backup_policy(self, policy: BackupPolicy | None) -> None:
        """Keep ``policy`` with the pair (durably: it survives a restart); None goes back
        to the daemon's configured policy."""
        self.backup_policy = policy
        await self._write_header()

    @property
    def effective_backup_policy(self) -> BackupPolicy:
        if self.backup_policy is not None:
            return self.backup_policy
        return dict(self.settings.backup_policies).get(self.name, self.settings.backup_policy)

    async def wait_until(self, done: Callable[[Pair], bool]) -> None:
        while not done(self):
            await self._changed.wait()

    def status(self) -> PairStatus:
        dirty = self.copy_set.count
        changed = self.src_changed.count + self.tgt_changed.count
        behind = dirty if self.phase.mirroring else dirty + changed
        percent = 100.0 * (self.chunks - min(behind, self.chunks)) / self.chunks
        return PairStatus(
            self.name,
            self.source.volume_id,
            self.target.volume_id,
            self.phase,
            self.reason,
            self.size,
            self.chunk_size,
            self.chunks,
            dirty,
            changed,
            round(percent, 2),
            self.copy_rate(),
            self.copied_bytes,
            self.split_time,
            self.effective_backup_policy,
            self.backup_policy is not None,
            self.error,
            self.group,
        )

    def copy_rate(self) -> float:
        now = time.monotonic()
        samples = self._samples
        while samples and now - samples[0][0] > 5.0:
            samples.popleft()
        if not samples:
            return 0.0
        span = max(now - samples[0][0], 1.0)
        return sum(n for _, n in samples) / span

    # -- the host path --------------------------------------------------------------------
    def _chunk_range(self, offset: int, length: int) -> range:
        cs = self.chunk_size
        return range(offset // cs, (offset + max(length, 1) - 1) // cs + 1)

    async def host_write(
        self, role: Role, offset: int, length: int, op: Callable[[], Awaitable[None]]
    ) -> None:
        """Run a host write (or deallocation) ``op`` on one of the pair's volumes."""
        began = self._splits
        self._entered[began] = self._entered.get(began, 0) + 1
        try:
            await self._host_write(role, chunks=self._chunk_range(offset, length), op=op)
        finally:
            left = self._entered[began] - 1
            if left:
                self._entered[began] = left
            else:
                del self._entered[began]
                self._entered_changed.set()

    async def _host_write(
        self, role: Role, *, chunks: range, op: Callable[[], Awaitable[None]]
    ) -> None:
        while True:
            phase = self.phase
            if phase is Phase.DELETE:  # the pair is going away: nothing left to track
                await op()
                return
            if role is Role.TARGET and not phase.target_writable:
                raise VolumeWriteProtected(self.target.volume_id)
            if role is Role.SOURCE and phase.source_fenced:
                raise VolumeWriteProtected(self.source.volume_id)
            if phase is Phase.SPLIT_PENDING:
                if role is Role.SOURCE and self._frozen is not None:
                    # The split set is read from the snapshot: no copy-before-write, only
                    # no overwriting a chunk still being copied from the image itself.
                    busy = [t for c in chunks if (t := self._tickets.get(c)) and t.from_head]
                    if busy:
                        await busy[0].done.wait()
                        continue
                    break
                pending = [c for c in chunks if c in self.copy_set]
                if pending:  # copy-before-write, then look at the phase again
                    await self._reflect_chunks(pending)
                    continue
            break
        if phase.mirroring:
            region = COPY_SET
        else:
            region = SRC_CHANGED if role is Role.SOURCE else TGT_CHANGED
        must_commit = False
        writers = self._writers
        for c in chunks:
            writers[c] = writers.get(c, 0) + 1
            ticket = self._tickets.get(c)
            if ticket is not None:
                ticket.spoiled = True
            must_commit |= self.journal.mark(region, c)
        if region == COPY_SET:
            self._work.set()
        try:
            if must_commit:
                await self.journal.commit()
            await op()
        finally:
            for c in chunks:
                left = writers[c] - 1
                if left:
                    writers[c] = left
                    continue
                del writers[c]
                wait = self._writer_waits.pop(c, None)
                if wait is not None:
                    wait.set()
                if c in self.copy_set:  # workers skip chunks being written while mirroring
                    self._work.set()

    async def read_target(self, offset: int, buf: memoryview) -> None:
        """A host read of the target: during SPLIT-PENDING, chunks of the split set are
        read from the source, where their split-instant content still is."""
        if self.phase is not Phase.SPLIT_PENDING or not any(
            c in self.copy_set for c in self._chunk_range(offset, len(buf))
        ):
            await self.target.base.read_into(offset, buf)
            return
        await self._merged_read(offset, buf)

    async def read_source(self, offset: int, buf: memoryview) -> None:
        """A host read of the source during a reverse resync: chunks still to restore are
        read from the target, so the source reads as the restored image from the start."""
        if self.phase is not Phase.REVERSE_COPY or not any(
            c in self.copy_set for c in self._chunk_range(offset, len(buf))
        ):
            await self.source.base.read_into(offset, buf)
            return
        await self._merged_read(offset, buf)

    async def _merged_read(self, offset: int, buf: memoryview) -> None:
        """Chunks of the copy set from where their content is (the source after a split,
        the target during a reverse resync), the rest from the other side."""
        pending_from, settled_from = self.source.base, self.target.base
        if self.phase is Phase.REVERSE_COPY:
            pending_from, settled_from = settled_from, pending_from
        cs = self.chunk_size
        pos = 0
        while pos < len(buf):
            at = offset + pos
            piece = buf[pos : pos + min(cs - at % cs, len(buf) - pos)]
            c = at // cs
            if c in self.copy_set:
                async with self._hold(c, wait_writers=True) as ticket:
                    if c in self.copy_set:
                        if self.phase is Phase.REVERSE_COPY:
                            await pending_from.read_into(at, piece)
                        else:
                            source = self._split_source()
                            ticket.from_head = source is self.source.base
                            await source.read_into(at, piece)
                    else:
                        await settled_from.read_into(at, piece)
            else:
                await settled_from.read_into(at, piece)
            pos += len(piece)

    # -- a primary with several secondaries (backing.pairs.fanout; the copies: ChunkCopier) ---
    def chunk_range(self, offset: int, length: int) -> range:
        return self._chunk_range(offset, length)

    def check_source_writable(self) -> None:
        if self.phase.source_fenced:
            raise VolumeWriteProtected(self.source.volume_id)

    async def source_write(
        self, offset: int, length: int, op: Callable[[], Awaitable[None]]
    ) -> None:
        await self.host_write(Role.SOURCE, offset, length, op)

    # -- for EXTENDED COPY ------------------------------------------------------------------
    async def reflect_range(self, offset: int, length: int) -> None:
        """Copy the split-set chunks of ``[offset, offset+length)`` to the target now,
        ahead of the background work (the reflect-first backup policy)."""
        if length <= 0:
            return
        pending = [c for c in self._chunk_range(offset, length) if c in self.copy_set]
        await self._reflect_chunks(pending)

    async def read_split_image(self, offset: int, length: int) -> bytes:
        """The target volume's bytes as they will be once the split set is reflected:
        split-set chunks from the source, the rest from the target (the merge backup
        policy). Only for a split pair."""
        if self.phase not in (Phase.SPLIT_PENDING, Phase.SPLIT):
            raise PairError(
                ErrorCode.WRONG_STATE, f"pair {self.name} is not split", phase=self.phase
            )
        buf = bytearray(length)
        await self._merged_read(offset, memoryview(buf))
        return bytes(buf)


__all__ = [
    "COPY_SET",
    "REVERSE_SIBLING_PHASES",
    "SPLIT_SNAPSHOT_PREFIX",
    "SRC_CHANGED",
    "TGT_CHANGED",
    "Pair",
    "PairSettings",
    "PairStatus",
]
