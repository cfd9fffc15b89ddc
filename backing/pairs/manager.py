"""The pair manager: the registry of volumes and pairs, their files and their life cycle.

It knows the volumes (every block LUN's :class:`PairVolume`, by volume id), keeps the
pairs under ``<state_dir>/pairs/``, resumes them at start and stops them cleanly.
Operations raise :class:`PairError` with an :class:`ErrorCode` when refused.

Callers outside ``backing/pairs`` do not use it directly: they go through
:class:`backing.pairs.service.PairService`, which checks access and scope first.

Pair names are scoped: a volume id is ``<scope>/<volume>`` (the daemon's scope is the
target's name), a pair's two volumes share a scope, and two scopes may each have a pair
of the same name. A scope's pair files live in ``pairs/<scope, %-quoted>/``; volumes
without a scope keep theirs in ``pairs/`` itself.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from pathlib import Path
from urllib.parse import quote, unquote

from backing.pairs.bitmap import PAGE_BITS, ChunkBitmap
from backing.pairs.engine import Pair, PairSettings, PairStatus
from backing.pairs.group_log import GroupLog, SplitRecord
from backing.pairs.group_ops import GroupOps
from backing.pairs.journal import REGIONS, PairFile, PairFileError, PairRecord
from backing.pairs.shared import SharedPairs, start_pair
from backing.pairs.states import (
    NAME,
    BackupPolicy,
    ErrorCode,
    PairError,
    Phase,
    SuspendReason,
    VolumeState,
)
from backing.pairs.volume import MAX_SECONDARIES, PairVolume, Role, scope_of

log = logging.getLogger(__name__)


def _attach_refusal(source: PairVolume, target: PairVolume, *, creating: bool) -> PairError | None:
    """Why ``source`` may not get one more pair onto ``target``, if it may not: a
    secondary is in no other pair, a primary is no secondary and has at most
    MAX_SECONDARIES pairs, and (``creating``) none of them is restoring it."""
    if target.pairs:
        return PairError(
            ErrorCode.VOLUME_IN_PAIR, f"{target.volume_id} is in pair {target.pairs[0].name}"
        )
    if source.role is Role.TARGET:
        return PairError(
            ErrorCode.VOLUME_IN_PAIR, f"{source.volume_id} is in pair {source.pairs[0].name}"
        )
    if len(source.pairs) >= MAX_SECONDARIES:
        names = ", ".join(p.name for p in source.pairs)
        return PairError(
            ErrorCode.TOO_MANY_SECONDARIES,
            f"{source.volume_id} is the primary of {len(source.pairs)} pairs already ({names}):"
            f" at most {MAX_SECONDARIES} secondaries per primary",
        )
    restoring = source.fenced_by()
    if creating and restoring is not None:
        return PairError(
            ErrorCode.WRONG_STATE,
            f"{source.volume_id} is being restored from pair {restoring.name}",
            phase=restoring.phase,
        )
    return None


class PairManager(GroupOps):
    """The registry of volumes and pairs and the pairs' life cycle (groups: :class:`GroupOps`)."""

    def __init__(
        self,
        state_dir: Path,
        settings: PairSettings | None = None,
        *,
        scopes: frozenset[str] | None = None,
    ) -> None:
        self.dir = Path(state_dir) / "pairs"
        # The scopes this manager owns (None: all): processes sharing a state dir, each
        # serving some targets, each resume only their own pairs and groups.
        self.scopes = scopes
        self.settings = settings or PairSettings()
        self.volumes: dict[str, PairVolume] = {}
        self.pairs: dict[tuple[str, str], Pair] = {}  # by (scope, name)
        # Consistency groups by (scope, name): their members' pair names, in order.
        self.groups: dict[tuple[str, str], list[str]] = {}
        self._lock = asyncio.Lock()  # one create/delete at a time: they check then act
        self._loaded: set[Path] = set()  # pair files resumed (start() may run again)
        self._groups_loaded: set[str] = set()  # scopes whose groups file was read
        # Each group's split record file (backing/pairs/group_log.py), by (scope, name).
        self.group_logs: dict[tuple[str, str], GroupLog] = {}
        # Members whose header may predate their group's last split, by (scope, pair):
        # (group, record). A pair loaded by start() is brought up to date first.
        self._behind: dict[tuple[str, str], tuple[str, SplitRecord]] = {}
        # A group split's background header writes, by group: awaited before the group's
        # record is written again or its membership changes.
        self._settling: dict[tuple[str, str], asyncio.Task[builtins.list[BaseException]]] = {}
        # One split / resync / reverse resync of a group at a time: a split in the middle
        # of a resync would take pairs whose resync is not yet on disk.
        self._group_ops: dict[tuple[str, str], asyncio.Lock] = {}
        # Pairs of volumes two gateways share: records in the cluster (backing/pairs/shared.py).
        self.shared = SharedPairs(self)

    def register_volume(self, volume: PairVolume) -> None:
        self.volumes[volume.volume_id] = volume

    def unregister_volume(self, volume_id: str) -> None:
        """Forget a volume that is in no pair (its LUN was removed by a reload)."""
        volume = self.volumes.get(volume_id)
        if volume is not None and volume.pair is not None:
            raise PairError(ErrorCode.VOLUME_IN_PAIR, f"{volume_id} is in pair {volume.pair.name}")
        self.volumes.pop(volume_id, None)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Load every pair file and resume its copying (after a restart or a kill -9), then
        the groups. Runs again after a reload added volumes: pair files whose volumes
        were missing before are resumed then; those already running are left alone. The
        pairs of shared volumes are shown from their records (run where the lock is)."""
        await self.shared.scan()
        self.shared.start()
        if not self.dir.is_dir():
            return
        self._read_group_logs()
        resumed: builtins.list[tuple[str, str]] = []
        to_start: builtins.list[Pair] = []
        for path in sorted([*self.dir.glob("*.pair"), *self.dir.glob("*/*.pair")]):
            if path in self._loaded or not self._owns(path.parent):
                continue
            try:
                pair_file, meta, bitmaps = PairFile.open(path)
            except (OSError, PairFileError, ValueError, KeyError) as err:
                log.error("pair file %s unreadable, ignored: %s", path, err)
                continue
            try:
                meta = self._catch_up(pair_file, meta)
            except OSError as err:
                log.error("pair %s: its header cannot be written, left as is: %s", path, err)
                pair_file.close()
                continue
            if meta.get("phase") == Phase.DELETE.name:
                pair_file.remove()
                continue
            source = self.volumes.get(meta["source"])
            target = self.volumes.get(meta["target"])
            if source is None or target is None or source.size != meta["size"]:
                log.error("pair %s: its volumes are not configured; left as is", meta["name"])
                pair_file.close()
                continue
            refusal = _attach_refusal(source, target, creating=False)
            if refusal is not None:
                log.error("pair %s: %s; left as is", meta["name"], refusal.args[0])
                pair_file.close()
                continue
            self._loaded.add(path)
            pair = Pair(meta, source, target, pair_file, bitmaps, self.settings)
            pair.attach()
            self.pairs[(scope_of(pair.source.volume_id), pair.name)] = pair
            resumed.append((scope_of(pair.source.volume_id), pair.name))
            to_start.append(pair)
        # Started once every pair is attached: a pair starting knows its primary's others
        # (whose split snapshots are theirs, not strays).
        for pair in to_start:
            await start_pair(pair, "resumed", log)
        await self._load_groups(resumed)
        await self._write_caught_up()

    def _owns(self, directory: Path) -> bool:
        if self.scopes is None:
            return True
        return ("" if directory == self.dir else unquote(directory.name)) in self.scopes

    def apply_settings(self, settings: PairSettings) -> None:
        """New settings from a reload: every pair follows them from now on
        (:meth:`Pair.retune`); pairs created from now on get the new chunk size."""
        self.settings = settings
        for pair in self.pairs.values():
            pair.retune(settings)

    async def stop(self) -> None:
        await asyncio.gather(*self._settling.values(), return_exceptions=True)
        await self.shared.stop()
        for pair in self.pairs.values():
            if not self.shared.shown(pair):  # a shown pair never ran here: nothing to write
                await pair.stop()
            pair.file.close()
        for glog in self.group_logs.values():
            glog.close()
        await self.shared.close()

    # -- the API ------------------------------------------------------------------------
    def get(self, name: str, scope: str | None = None) -> Pair:
        """The pair ``name`` in ``scope``; with no scope, the one pair of that name."""
        if scope is not None:
            pair = self.pairs.get((scope, name))
            if pair is None:
                raise PairError(ErrorCode.UNKNOWN_PAIR, f"no pair named {name!r}")
            return pair
        found = [p for (_, n), p in self.pairs.items() if n == name]
        if not found:
            raise PairError(ErrorCode.UNKNOWN_PAIR, f"no pair named {name!r}")
        if len(found) > 1:
            scopes = ", ".join(sorted(s for s, n in self.pairs if n == name))
            raise PairError(
                ErrorCode.AMBIGUOUS_NAME, f"pair {name!r} exists in {scopes}: name the target"
            )
        return found[0]

    def pair_of(self, volume_id: str) -> Pair | None:
        """The pair ``volume_id`` belongs to (as source or target), if any; of a primary
        with several secondaries, the first (by name)."""
        volume = self.volumes.get(volume_id)
        return None if volume is None else volume.pair

    def pairs_of(self, volume_id: str) -> builtins.list[Pair]:
        """Every pair ``volume_id`` is in: its secondaries' pairs for a primary (by name),
        its one pair for a secondary."""
        volume = self.volumes.get(volume_id)
        return [] if volume is None else builtins.list(volume.pairs)

    async def create(
        self,
        name: str,
        source_id: str,
        target_id: str,
        backup_policy: BackupPolicy | None = None,
    ) -> PairStatus:
        async with self._lock:
            if not NAME.fullmatch(name):
                raise PairError(ErrorCode.BAD_NAME, f"bad pair name {name!r}")
            scope = scope_of(source_id)
            if scope_of(target_id) != scope:
                raise PairError(ErrorCode.UNKNOWN_VOLUME, "the volumes are in different scopes")
            if (scope, name) in self.pairs:
                raise PairError(ErrorCode.NAME_IN_USE, f"pair {name!r} exists")
            source = self._volume(source_id)
            target = self._volume(target_id)
            if source is target:
                raise PairError(ErrorCode.SAME_VOLUME, "source and target are one volume")
            refusal = _attach_refusal(source, target, creating=True)
            if refusal is not None:
                raise refusal
            if source.size != target.size:
                raise PairError(
                    ErrorCode.SIZE_MISMATCH, f"sizes differ: {source.size} != {target.size}"
                )
            if target.read_only:
                raise PairError(ErrorCode.READ_ONLY_VOLUME, f"{target_id} is read-only")
            chunk = self.settings.chunk_size
            chunks = (source.size + chunk - 1) // chunk
            npages = (chunks + PAGE_BITS - 1) // PAGE_BITS
            meta = {
                "name": name,
                "source": source_id,
                "target": target_id,
                "size": source.size,
                "chunk_size": chunk,
                "chunks": chunks,
                "npages": npages,
                "phase": Phase.DUPLEX_PENDING.name,
                "reason": SuspendReason.NONE.name,
                "split_time": None,
                "initializing": True,
                "backup_policy": None if backup_policy is None else int(backup_policy),
            }
            pair_file: PairRecord
            if self.shared.is_shared(target):  # two gateways: the record is in the cluster
                await self.shared.create_here(source, target)
                # Taking the locks showed the other gateway's records: check again.
                refusal = _attach_refusal(source, target, creating=True)
                if refusal is not None:
                    raise refusal
                pair_file = await self.shared.new_record(target, meta, npages)
            else:
                loop = asyncio.get_running_loop()
                path = (self.dir / quote(scope, safe="") if scope else self.dir) / f"{name}.pair"
                pair_file = await loop.run_in_executor(None, PairFile.create, path, meta, npages)
            bitmaps = [ChunkBitmap(chunks) for _ in range(REGIONS)]
            pair = Pair(meta, source, target, pair_file, bitmaps, self.settings)
            pair.attach()
            self.pairs[(scope, name)] = pair
            await pair.start()
            return pair.status()

    async def split(self, name: str, scope: str | None = None) -> PairStatus:
        pair = await self.shared.here(self.get(name, scope))
        await pair.split()
        return pair.status()

    async def resync(self, name: str, scope: str | None = None) -> PairStatus:
        pair = await self.shared.here(self.get(name, scope))
        await pair.resync()
        return pair.status()

    async def set_backup_policy(
        self, name: str, policy: BackupPolicy | None, scope: str | None = None
    ) -> PairStatus:
        """The pair's own backup policy, kept in its file; None: the configured one."""
        pair = await self.shared.here(self.get(name, scope))
        await pair.set_backup_policy(policy)
        return pair.status()

    async def delete(self, name: str, scope: str | None = None) -> None:
        async with self._lock:
            pair = await self.shared.here(self.get(name, scope))
            if pair.group is not None:  # a deleted pair leaves its group first
                scope = scope_of(pair.source.volume_id)
                await self._settled(scope, pair.group)
                rest = [m for m in self._members(scope, pair.group) if m != pair.name]
                await self._set_members(scope, pair.group, rest)
                pair.group = None
            await pair.delete()
            self.shared.running.discard(pair.target.volume_id)
            del self.pairs[(scope_of(pair.source.volume_id), pair.name)]

    def status(self, name: str, scope: str | None = None) -> PairStatus:
        return self.get(name, scope).status()

    def list(self) -> list[PairStatus]:
        return [self.pairs[key].status() for key in sorted(self.pairs, key=lambda k: (k[1], k[0]))]

    async def wait(
        self, name: str, state: VolumeState, timeout: float | None = None, scope: str | None = None
    ) -> PairStatus:
        """Return once both volumes of the pair are in ``state`` (like pairevtwait).
        ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        pair = self.get(name, scope)
        await asyncio.wait_for(
            pair.wait_until(lambda p: p.phase.source == state and p.phase.target == state),
            timeout,
        )
        return pair.status()

    def _volume(self, volume_id: str) -> PairVolume:
        volume = self.volumes.get(volume_id)
        if volume is None:
            raise PairError(ErrorCode.UNKNOWN_VOLUME, f"no volume {volume_id!r}")
        return volume


__all__ = ["PairManager", "scope_of"]
