"""Pairs shared by two gateways: the record in the cluster, run where the source's lock is.

Under ``[gateway]`` (docs/rbd.md) every volume is an RBD image both gateways serve, and a
volume the daemon made shared has ``record_object`` (where a pair whose target it is
keeps its record, backing/pairs/cluster.py) and ``take_lock`` (take its image's lock
here). Such a pair is on both gateways, in one of two ways:

- **running** on the gateway that holds its source's lock: the engine (copy workers,
  copy-before-write, bitmap commits) works as with a pair file, on the record it
  claimed, so a write of the other gateway's is refused from then on;
- **shown** on the other one: the record as last read (status, PAIR IN, the target's
  write protection), not started, read again whenever its version changes.

The gateway calls :meth:`run_here` once it took a source's lock (before any write is
admitted) and :meth:`hand_over` before it gives the lock up or once it was fenced; the
running one keeps the locks while its pair has copying to do (:meth:`holds`). A shown
pair that has copying to do asks for its source's lock (``take_lock("pair")``) every
:data:`REFRESH` seconds: a live holder says no, a dead one is fenced by the gateway's
takeover, and the survivor resumes the copy from the record. Two gateways never copy one
pair at once: only the lock holder runs it, and it takes the target's lock and claims the
record before its first copy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from backing.pairs.cluster import VERSION, ClusterPairFile
from backing.pairs.engine import Pair
from backing.pairs.states import ErrorCode, PairError, Phase
from backing.pairs.volume import MAX_SECONDARIES, Role, scope_of

if TYPE_CHECKING:
    from backing.pairs.manager import PairManager
    from backing.pairs.volume import PairVolume

log = logging.getLogger(__name__)


async def start_pair(pair: Pair, how: str, logger: logging.Logger) -> None:
    """Start ``pair``'s copy and log where it stands (``pair NAME <how>: PHASES, N chunks
    to copy``): a pair resumed from its file, or taken over from the other gateway."""
    await pair.start()
    status = pair.status()
    logger.info(
        "pair %s %s: %s/%s, %d chunks to copy",
        pair.name,
        how,
        status.phase.source.label,
        status.phase.target.label,
        status.dirty_chunks,
    )


REFRESH = 1.0  # seconds between looks at the records of the pairs shown here
# Phases with work for the gateway that runs the pair (DELETE: a deletion its gateway's
# death cut short, finished by the other).
COPYING = frozenset(
    {Phase.DUPLEX_PENDING, Phase.RESYNC, Phase.SPLIT_PENDING, Phase.REVERSE_COPY, Phase.DELETE}
)

Found = tuple[ClusterPairFile, dict[str, Any], list[Any]]


def has_copying(pair: Pair) -> bool:
    """Whether the pair has chunks to copy (as its record says)."""
    return (
        pair.initializing
        or pair.phase in COPYING
        or (pair.phase.mirroring and pair.copy_set.count > 0)
    )


class SharedPairs:
    def __init__(self, manager: PairManager) -> None:
        self.manager = manager
        self.running: set[str] = set()  # target volume ids of the pairs running here
        self.runs = 0  # times a pair started running on this gateway
        self._task: asyncio.Task[None] | None = None
        self._asking: set[str] = set()
        self._asks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # one change of who runs what at a time
        # One record object (a RADOS client) per shared volume, for the daemon's life.
        self._objects: dict[str, Any] = {}

    # -- which pairs ------------------------------------------------------------------
    @staticmethod
    def is_shared(volume: PairVolume) -> bool:
        return volume.record_object is not None

    def _volumes(self) -> list[PairVolume]:
        return [v for v in self.manager.volumes.values() if v.record_object is not None]

    def shown(self, pair: Pair) -> bool:
        """A shared pair this gateway shows but does not run."""
        return self.is_shared(pair.target) and pair.target.volume_id not in self.running

    def holds(self, volume_id: str, why: str) -> bool:
        """Whether this gateway keeps ``volume_id``'s lock when the other asks for it:
        the target of a pair running here always; its source against a pair's request
        (a host write through the other gateway still moves the pair with the lock)."""
        for target_id in self.running:
            pair = self.manager.volumes[target_id].pair
            if pair is None or getattr(pair.file, "taken", False):
                continue
            if target_id == volume_id or (why == "pair" and pair.source.volume_id == volume_id):
                return True
        return False

    # -- loading ----------------------------------------------------------------------
    def _object(self, volume: PairVolume) -> Any:
        """The record object of pairs whose target ``volume`` is (blocking at first)."""
        obj = self._objects.get(volume.volume_id)
        if obj is None:
            make = volume.record_object
            assert make is not None
            obj = self._objects[volume.volume_id] = make()
        return obj

    async def _load(self, target: PairVolume, *, claim: bool) -> Found | None:
        def load() -> Found | None:
            return ClusterPairFile.load(self._object(target), claim=claim)

        return await asyncio.get_running_loop().run_in_executor(None, load)

    def _install(self, found: Found, target: PairVolume) -> Pair | None:
        record, meta, bitmaps = found
        source = self.manager.volumes.get(meta.get("source", ""))
        if meta.get("target") != target.volume_id or source is None or source.size != meta["size"]:
            log.error("pair record %s: its volumes are not configured here; ignored", record.path)
            record.close()
            return None
        # A primary has up to MAX_SECONDARIES pairs (1:N); a secondary is in no other pair.
        others = [p for p in source.pairs if p.target is not target]
        if source.role is Role.TARGET or len(others) >= MAX_SECONDARIES:
            busy = others[0].name if others else "another pair"
            log.error("pair record %s: its source is in pair %s", record.path, busy)
            record.close()
            return None

        old = target.pair
        pair = Pair(meta, source, target, record, bitmaps, self.manager.settings)
        pair.group = old.group if old is not None else None
        if "group" in meta:  # the record says (a change made through the other gateway)
            self._regroup(scope_of(source.volume_id), pair.name, pair.group, meta["group"])
            pair.group = meta["group"]
        if old is not None:
            old.source.detach(old)  # the record read again replaces it
            old.target.detach(old)
            old.file.close()
            self.manager.pairs.pop((scope_of(old.source.volume_id), old.name), None)
        pair.attach()
        self.manager.pairs[(scope_of(source.volume_id), pair.name)] = pair
        return pair

    def _regroup(self, scope: str, name: str, old: str | None, new: str | None) -> None:
        """Pair ``name`` moves from group ``old`` to ``new`` in the manager's memory."""
        groups = self.manager.groups
        if old is not None and old != new and (scope, old) in groups:
            rest = [m for m in groups[(scope, old)] if m != name]
            if rest:
                groups[(scope, old)] = rest
            else:
                del groups[(scope, old)]
        if new is not None:
            members = groups.setdefault((scope, new), [])
            if name not in members:
                members.append(name)

    async def record_group(
        self, scope: str, group: str, before: list[str], after: list[str] | None
    ) -> None:
        """Group ``group`` goes from ``before`` to ``after`` (None: deleted): each shared
        pair whose group changes has it written in its record (moved here first)."""
        new = set(after or ())
        for name in dict.fromkeys([*before, *new]):
            pair = self.manager.pairs.get((scope, name))
            if pair is None or not self.is_shared(pair.target):
                continue
            wanted = group if name in new else None
            if pair.group == wanted:
                continue
            pair = await self.here(pair)
            old = pair.group
            pair.group = wanted
            try:
                await pair.write_header()
            except BaseException:
                pair.group = old
                raise

    def _forget(self, pair: Pair) -> None:

        pair.file.close()
        pair.source.detach(pair)
        pair.target.detach(pair)
        self.manager.pairs.pop((scope_of(pair.source.volume_id), pair.name), None)

    async def show(self, target: PairVolume) -> Pair | None:
        try:
            found = await self._load(target, claim=False)
        except (OSError, ValueError, KeyError) as err:
            log.error("pair record of %s unreadable: %s", target.volume_id, err)
            return None
        return None if found is None else self._install(found, target)

    async def scan(self) -> None:
        """Show the pairs recorded for shared volumes that are in none here yet."""
        for volume in self._volumes():
            if volume.pair is None:
                await self.show(volume)

    # -- who runs what ------------------------------------------------------------------
    async def run_here(self, source_id: str) -> None:
        """This gateway holds ``source_id``'s lock: its pairs (one per secondary, 1:N) run
        here from now on. Each takes its target's lock, claims its record (reading it
        whole) and resumes."""
        source = self.manager.volumes.get(source_id)
        if source is None or not self.is_shared(source):
            return
        if source.role is Role.TARGET:
            return  # a pair's target (its lock is taken by the run below: no re-entry)
        async with self._lock:
            if len(source.pairs) < MAX_SECONDARIES:  # a secondary the other gateway made
                await self.scan()
            for pair in [p for p in source.pairs if p.source is source]:
                await self._run(pair)

    async def _run(self, pair: Pair) -> None:
        """One pair of a source whose lock this gateway holds: run here (under _lock)."""
        target = pair.target
        if target.volume_id in self.running:
            return
        # The record first: from here on the other gateway's writes of it are refused
        # (it may be frozen and wake up), and host writes here are tracked in it.
        try:
            found = await self._load(target, claim=True)
        except (OSError, ValueError, KeyError) as err:
            log.error("pair %s: its record cannot be claimed: %s", pair.name, err)
            return
        if found is None:  # deleted meanwhile
            self._forget(pair)
            return
        running = self._install(found, target)
        if running is None:
            return
        if running.phase is Phase.DELETE:  # its gateway died deleting it: finish
            await self._finish_delete(running)
            return
        # Then the target's lock, which the other gateway keeps until it learns that
        # its pair was taken over: until then the pair is tracked here, not copied
        # (the refresher asks again).
        if target.take_lock is not None and not await target.take_lock("pair"):
            log.warning("pair %s: its target's lock not taken yet", running.name)
            return
        self._watch(running)
        self.running.add(target.volume_id)
        self.runs += 1
        await start_pair(running, "runs here", log)

    def _watch(self, pair: Pair) -> None:
        record = pair.file
        if isinstance(record, ClusterPairFile):
            record.on_taken = lambda: self._spawn(self._taken(pair))

    def _spawn(self, body: Any) -> None:
        task = asyncio.ensure_future(body)
        self._asks.add(task)
        task.add_done_callback(self._asks.discard)

    async def _taken(self, pair: Pair) -> None:
        """The other gateway claimed the record of a pair running here (this one was
        fenced, or frozen): it stops here, without writing anything more."""
        async with self._lock:
            target_id = pair.target.volume_id
            if target_id not in self.running or self.manager.volumes[target_id].pair is not pair:
                return
            self.running.discard(target_id)
            log.warning("pair %s: taken over by the other gateway; stopped here", pair.name)
            await pair.stop()

    async def _finish_delete(self, pair: Pair) -> None:
        base: Any = pair.source.base
        if pair.split_snapshot is not None and getattr(base, "thaw", None) is not None:
            try:
                await base.thaw(None, pair.split_snapshot)
            except OSError as err:
                log.warning("pair %s: snapshot %s kept: %s", pair.name, pair.split_snapshot, err)
        record = pair.file
        self._forget(pair)
        await record.discard()
        log.info("pair %s: deleted (its deletion was cut short)", pair.name)

    async def hand_over(self, source_id: str) -> None:
        """This gateway gives ``source_id``'s lock up (or lost it): its pairs stop here
        (their last cleared bits written, unless the record was claimed meanwhile) and
        are only shown."""
        async with self._lock:
            for target_id in list(self.running):
                pair = self.manager.volumes[target_id].pair
                if pair is None or pair.source.volume_id != source_id:
                    continue
                self.running.discard(target_id)
                await pair.stop()
                log.info("pair %s handed over", pair.name)

    async def here(self, pair: Pair, why: str = "operation") -> Pair:
        """``pair``, running on this gateway (an operation on it is about to change it):
        its source's lock is taken here first. PairError (ELSEWHERE) if the other
        gateway keeps it."""
        if not self.shown(pair):
            return pair
        take = pair.source.take_lock
        if take is None or not await take(why):
            raise PairError(
                ErrorCode.ELSEWHERE, f"pair {pair.name} runs on the other gateway", phase=pair.phase
            )
        await self.run_here(pair.source.volume_id)
        running = pair.target.pair
        if running is None or self.shown(running):
            raise PairError(
                ErrorCode.ELSEWHERE, f"pair {pair.name} runs on the other gateway", phase=pair.phase
            )
        return running

    async def follow_target(self, volume_id: str) -> None:
        """A host write to the target of a pair shown here (a split pair's target is
        writable): the pair comes here first (its source's lock, as a write to the source
        would take it), so the write is tracked in its record."""
        volume = self.manager.volumes.get(volume_id)
        pair = None if volume is None else volume.pair
        if pair is None or pair.target is not volume or not self.shown(pair):
            return
        take = pair.source.take_lock
        if take is not None:
            await take("")

    async def create_here(self, source: PairVolume, target: PairVolume) -> None:
        """Before a shared pair is made: both locks taken here (refused otherwise)."""
        for volume in (source, target):
            take = volume.take_lock
            if take is not None and not await take("operation"):
                raise PairError(
                    ErrorCode.ELSEWHERE, f"{volume.volume_id}: the other gateway keeps its lock"
                )

    async def new_record(
        self, target: PairVolume, meta: dict[str, Any], npages: int
    ) -> ClusterPairFile:
        def create() -> ClusterPairFile:
            return ClusterPairFile.create(self._object(target), meta, npages)

        try:
            record = await asyncio.get_running_loop().run_in_executor(None, create)
        except FileExistsError as err:
            raise PairError(ErrorCode.VOLUME_IN_PAIR, str(err)) from None
        self.running.add(target.volume_id)
        record.on_taken = lambda: self._taken_record(target.volume_id)
        self.runs += 1
        return record

    def _taken_record(self, target_id: str) -> None:
        pair = self.manager.volumes[target_id].pair
        if pair is not None:
            self._spawn(self._taken(pair))

    # -- the shown pairs' refresher -------------------------------------------------------
    def start(self) -> None:
        if self._task is None and self._volumes():
            self._task = asyncio.ensure_future(self._refresh())

    async def stop(self) -> None:
        tasks = [*self._asks, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def close(self) -> None:
        """Disconnect the record objects (after the pairs stopped: what they had to write
        is written). A read still running (a refresh's, cancelled) is not waited for: it
        has nothing to write, and with the cluster out of reach it runs until its timeout;
        the object's client shuts down as it ends (backing/rados_object.py)."""
        objects, self._objects = list(self._objects.values()), {}
        loop = asyncio.get_running_loop()
        for obj in objects:
            await loop.run_in_executor(None, obj.close, 0.0)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            try:
                await self.refresh()
            except Exception:
                log.exception("pair records: refresh failed")

    async def refresh(self) -> None:
        """Read again the records that changed; a pair with copying to do asks for its
        source's lock (resumed here if its gateway died)."""
        loop = asyncio.get_running_loop()
        await self.scan()
        for volume in self._volumes():
            pair = volume.pair
            if pair is None or pair.target is not volume or not self.shown(pair):
                continue
            record = pair.file
            assert isinstance(record, ClusterPairFile)
            try:
                version = await loop.run_in_executor(None, record.obj.xattr, VERSION)
            except OSError as err:
                log.debug("pair %s: record not read: %s", pair.name, err)
                continue
            if version is None:  # deleted by the gateway that ran it
                self._forget(pair)
                continue
            if int(version) != record.version:
                shown = await self.show(volume)
                if shown is None:
                    continue
                pair = shown
            source = pair.source
            wanted = has_copying(pair) and source.take_lock is not None
            if wanted and source.volume_id not in self._asking:
                self._asking.add(source.volume_id)
                task = asyncio.ensure_future(self._ask(source))
                self._asks.add(task)
                task.add_done_callback(self._asks.discard)

    async def _ask(self, source: PairVolume) -> None:
        take = source.take_lock
        assert take is not None
        try:
            if await take("pair"):
                await self.run_here(source.volume_id)
        except Exception:
            log.exception("pair of %s: taking its source's lock failed", source.volume_id)
        finally:
            self._asking.discard(source.volume_id)
