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
import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from backing.pairs import groups as group_file
from backing.pairs.bitmap import PAGE_BITS, ChunkBitmap
from backing.pairs.engine import Pair, PairSettings, PairStatus
from backing.pairs.group_log import SUFFIX as GROUP_LOG_SUFFIX
from backing.pairs.group_log import GroupLog, SplitRecord
from backing.pairs.groups import GROUPS_FILE, GroupStatus
from backing.pairs.journal import REGIONS, PairFile, PairFileError, PairRecord
from backing.pairs.shared import SharedPairs
from backing.pairs.states import (
    BackupPolicy,
    ErrorCode,
    Event,
    PairError,
    Phase,
    SuspendReason,
    VolumeState,
    next_phase,
)
from backing.pairs.volume import MAX_SECONDARIES, PairVolume, Role

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
SPLIT_PHASES = (Phase.SPLIT_PENDING, Phase.SPLIT)
# A pair may join a group in these phases only: a split one carries another split instant.
JOINABLE = frozenset({Phase.DUPLEX_PENDING, Phase.DUPLEX, Phase.RESYNC, Phase.SUSPENDED})


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


def scope_of(volume_id: str) -> str:
    """The scope of a volume id ``<scope>/<volume>`` ("" without a slash)."""
    return volume_id.rpartition("/")[0]


class PairManager:
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
            await pair.start()
            status = pair.status()
            log.info(
                "pair %s resumed: %s/%s, %d chunks to copy",
                pair.name,
                status.phase.source.label,
                status.phase.target.label,
                status.dirty_chunks,
            )
        await self._load_groups(resumed)
        await self._write_caught_up()

    def _owns(self, directory: Path) -> bool:
        if self.scopes is None:
            return True
        return ("" if directory == self.dir else unquote(directory.name)) in self.scopes

    def _read_group_logs(self) -> None:
        """Open each group's split record file (once) and note the members whose headers
        may not carry the group's last split yet."""
        for path in [*self.dir.glob(f"*{GROUP_LOG_SUFFIX}"),
                     *self.dir.glob(f"*/*{GROUP_LOG_SUFFIX}")]:  # fmt: skip
            scope = "" if path.parent == self.dir else unquote(path.parent.name)
            key = (scope, path.name.removesuffix(GROUP_LOG_SUFFIX))
            if key in self.group_logs or not self._owns(path.parent):
                continue
            try:
                glog = GroupLog.open(path)
            except OSError as err:
                log.error("group split record %s unreadable, ignored: %s", path, err)
                continue
            self.group_logs[key] = glog
            if glog.record is not None:
                for member in glog.record.pending:
                    self._behind[(scope, member)] = (key[1], glog.record)

    def _catch_up(self, pair_file: PairFile, meta: dict[str, Any]) -> dict[str, Any]:
        """The header as of the group's last split record: a group split is answered once
        its record is durable and the members' headers follow, so a crash in between
        leaves headers that still say mirroring. Written back before the pair is built
        (its bitmaps mean what the split phase says: the split set, then what changed)."""
        scope = scope_of(str(meta["source"]))
        key = (scope, str(meta["name"]))
        found = self._behind.get(key)
        if found is None:
            return meta
        group, record = found
        phase = Phase[str(meta["phase"])]
        if meta.get("group_seen") == record.token or phase is Phase.DELETE:
            del self._behind[key]
            return meta
        if not phase.mirroring:  # cannot be: a member splits from mirroring only
            log.error(
                "group %s: pair %s is %s on disk, so the group's split of %s cannot be"
                " brought to it; left as is",
                group, meta["name"], phase.name, record.token,
            )  # fmt: skip
            del self._behind[key]
            return meta
        meta = {
            **meta,
            "phase": next_phase(phase, Event.SPLIT).name,
            "split_time": record.split_time,
            "group_split": record.token,
            "group_seen": record.token,
        }
        pair_file.write_header(meta)
        del self._behind[key]
        log.warning(
            "group %s: pair %s: the group's answered split had not reached its header"
            " before the daemon stopped; it has now",
            group, meta["name"],
        )  # fmt: skip
        return meta

    async def _write_caught_up(self) -> None:
        """Rewrite the record of each group whose members were all brought up to date."""
        for key, glog in self.group_logs.items():
            record = glog.record
            if record is None or not record.pending:
                continue
            behind = tuple(m for m in record.pending if (key[0], m) in self._behind)
            if behind != record.pending:
                try:
                    await glog.commit(SplitRecord(record.token, record.split_time, behind))
                except OSError:  # the headers have it already: only a later start rereads
                    log.exception("group split record %s: marking it settled failed", glog.path)

    async def _load_groups(self, resumed: builtins.list[tuple[str, str]]) -> None:
        """Read each scope's groups file (once), then finish what a crash interrupted: a
        group split that reached some members' headers and not others was never answered,
        so the members it split go back to mirroring (a resync). Checked for every group
        loaded now and every group a pair ``resumed`` now (a reload's LUNs) belongs to."""
        paths = [self.dir / GROUPS_FILE, *self.dir.glob(f"*/{GROUPS_FILE}")]
        new: list[tuple[str, str]] = []
        for path in paths:
            scope = "" if path.parent == self.dir else unquote(path.parent.name)
            if scope in self._groups_loaded or not path.is_file() or not self._owns(path.parent):
                continue
            try:
                found = group_file.load(path)
            except (OSError, ValueError) as err:
                log.error("groups file %s unreadable, ignored: %s", path, err)
                continue
            self._groups_loaded.add(scope)
            for name, members in found.items():
                self.groups[(scope, name)] = members
                new.append((scope, name))
        for (scope, name), members in self.groups.items():
            for m in members:
                if (scope, m) in self.pairs:
                    self.pairs[(scope, m)].group = name
                if (scope, m) in resumed and (scope, name) not in new:
                    new.append((scope, name))
        for scope, name in new:
            await self._finish_group_split(scope, name)

    async def _finish_group_split(self, scope: str, name: str) -> None:
        members = self.groups[(scope, name)]
        pairs = [self.pairs[(scope, m)] for m in members if (scope, m) in self.pairs]
        await self._roll_back_unanswered(name, pairs)

    async def _roll_back_unanswered(self, name: str, pairs: builtins.list[Pair]) -> None:
        """A group split that reached some members and not others was never answered
        (the answer waits for the record, or with shared pairs for every member's record):
        the members carrying it go back to mirroring, so the host's retry splits all."""
        if not any(p.group_split for p in pairs) or not any(p.phase.mirroring for p in pairs):
            return
        for pair in pairs:
            if pair.group_split and pair.phase in (*SPLIT_PHASES, Phase.SUSPENDED):
                log.warning(
                    "group %s: its last split did not reach every pair before a crash"
                    " (it was never answered); pair %s goes back to mirroring",
                    name,
                    pair.name,
                )
                try:
                    await pair.resync()
                except Exception:
                    log.exception("group %s: resync of pair %s failed", name, pair.name)

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
            if source.pairs and (self.shared.is_shared(source) or self.shared.is_shared(target)):
                raise PairError(
                    ErrorCode.TOO_MANY_SECONDARIES,
                    f"{source.volume_id} is in pair {source.pairs[0].name}: a volume two"
                    " gateways share has one secondary (several: only where one gateway"
                    " serves it)",
                )
            if self.shared.is_shared(target):  # two gateways: the record is in the cluster
                await self.shared.create_here(source, target)
                for volume in (source, target):  # the other gateway's record, found meanwhile
                    if volume.pair is not None:
                        raise PairError(
                            ErrorCode.VOLUME_IN_PAIR,
                            f"{volume.volume_id} is in pair {volume.pair.name}",
                        )
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

    # -- consistency groups ---------------------------------------------------------------
    def _members(self, scope: str, name: str) -> builtins.list[str]:
        members = self.groups.get((scope, name))
        if members is None:
            raise PairError(ErrorCode.UNKNOWN_GROUP, f"no group named {name!r}")
        return members

    def group_scope(self, name: str, scope: str | None = None) -> str:
        """The scope of group ``name``: ``scope`` if given, else the one group so named."""
        if scope is not None:
            self._members(scope, name)
            return scope
        found = sorted(s for s, n in self.groups if n == name)
        if not found:
            raise PairError(ErrorCode.UNKNOWN_GROUP, f"no group named {name!r}")
        if len(found) > 1:
            raise PairError(
                ErrorCode.AMBIGUOUS_NAME,
                f"group {name!r} exists in {', '.join(found)}: name the target",
            )
        return found[0]

    def group_pairs(self, name: str, scope: str) -> builtins.list[Pair]:
        """The group's pairs; PairError (UNKNOWN_PAIR) if one of them is not loaded."""
        out = []
        for member in self._members(scope, name):
            pair = self.pairs.get((scope, member))
            if pair is None:
                raise PairError(
                    ErrorCode.UNKNOWN_PAIR,
                    f"pair {member!r} of group {name!r} does not exist (not loaded)",
                )
            out.append(pair)
        return out

    def group_status(self, name: str, scope: str | None = None) -> GroupStatus:
        scope = self.group_scope(name, scope)
        members = [self.pairs[(scope, m)] for m in self._members(scope, name)
                   if (scope, m) in self.pairs]  # fmt: skip
        return GroupStatus(name, scope, tuple(p.status() for p in members))

    def list_groups(self) -> builtins.list[GroupStatus]:
        return [self.group_status(n, s) for s, n in sorted(self.groups, key=lambda k: (k[1], k[0]))]

    async def _set_members(self, scope: str, name: str, members: builtins.list[str] | None) -> None:
        """Write the scope's groups with ``name`` having ``members`` (None: no group),
        durably, then take it in memory."""
        groups = {n: list(m) for (s, n), m in self.groups.items() if s == scope}
        if members is None:
            groups.pop(name, None)
        else:
            groups[name] = members
        path = self._scope_dir(scope) / GROUPS_FILE
        loop = asyncio.get_running_loop()
        await self._settled(scope, name)
        # Pairs two gateways share carry their group in their record: the other gateway
        # reads it there (its own groups file is not told).
        await self.shared.record_group(scope, name, self.groups.get((scope, name), []), members)
        await loop.run_in_executor(None, group_file.save, path, groups)
        self._groups_loaded.add(scope)
        if members is None:
            self.groups.pop((scope, name), None)
            glog = self.group_logs.pop((scope, name), None)
            if glog is not None:
                await loop.run_in_executor(None, glog.remove)
        else:
            self.groups[(scope, name)] = members

    def _scope_dir(self, scope: str) -> Path:
        return self.dir / quote(scope, safe="") if scope else self.dir

    async def _settled(self, scope: str, name: str) -> None:
        """Once the group's last split is on every member's header and its record says so."""
        task = self._settling.get((scope, name))
        if task is not None and not task.done():  # (done: no await, no turn of the loop)
            await asyncio.gather(task, return_exceptions=True)

    async def _group_log(self, scope: str, name: str, *, fresh: bool = False) -> GroupLog:
        """The group's split record file, opened (created) if need be; ``fresh``: a new
        group's, whatever a group of that name left behind."""
        key = (scope, name)
        glog = self.group_logs.get(key)
        loop = asyncio.get_running_loop()
        if glog is not None and fresh:
            del self.group_logs[key]
            await loop.run_in_executor(None, glog.remove)
            glog = None
        if glog is None:
            path = self._scope_dir(scope) / f"{name}{GROUP_LOG_SUFFIX}"
            if fresh:
                await loop.run_in_executor(None, lambda: path.unlink(missing_ok=True))
            glog = await loop.run_in_executor(None, GroupLog.open, path)
            self.group_logs[key] = glog
        return glog

    def _check_joinable(
        self, scope: str, group: str, names: builtins.list[str]
    ) -> builtins.list[Pair]:
        pairs = []
        for member in names:
            pair = self.pairs.get((scope, member))
            if pair is None:
                raise PairError(ErrorCode.UNKNOWN_PAIR, f"no pair named {member!r}")
            if pair.group is not None and pair.group != group:
                raise PairError(ErrorCode.IN_GROUP, f"pair {member!r} is in group {pair.group!r}")
            if pair.phase not in JOINABLE or pair.group_split is not None:
                raise PairError(
                    ErrorCode.WRONG_STATE,
                    f"pair {member!r} is {pair.phase.target.label}: a pair joins a group"
                    " while mirroring (or suspended), never split",
                    phase=pair.phase,
                )
            pairs.append(pair)
        if len(set(names)) != len(names):
            raise PairError(ErrorCode.BAD_NAME, "a pair is named twice")
        current = self.groups.get((scope, group), [])
        for member in current:
            pair = self.pairs.get((scope, member))
            if pair is not None and pair.group_split is not None:
                raise PairError(
                    ErrorCode.WRONG_STATE,
                    f"group {group!r} is split: resync it before adding pairs",
                    phase=pair.phase,
                )
        return pairs

    async def create_group(self, name: str, scope: str, members: builtins.list[str]) -> GroupStatus:
        async with self._lock:
            if not NAME.fullmatch(name):
                raise PairError(ErrorCode.BAD_NAME, f"bad group name {name!r}")
            if (scope, name) in self.groups:
                raise PairError(ErrorCode.NAME_IN_USE, f"group {name!r} exists")
            pairs = self._check_joinable(scope, name, members)
            await self._group_log(scope, name, fresh=True)
            await self._set_members(scope, name, list(members))
            for pair in pairs:
                pair.group = name
        return self.group_status(name, scope)

    async def add_to_group(self, name: str, scope: str, members: builtins.list[str]) -> GroupStatus:
        async with self._lock:
            current = self._members(scope, name)
            new = [m for m in members if m not in current]
            pairs = self._check_joinable(scope, name, new)
            await self._set_members(scope, name, [*current, *new])
            for pair in pairs:
                pair.group = name
        return self.group_status(name, scope)

    async def remove_from_group(
        self, name: str, scope: str, members: builtins.list[str]
    ) -> GroupStatus:
        async with self._lock:
            current = self._members(scope, name)
            for member in members:
                if member not in current:
                    raise PairError(
                        ErrorCode.UNKNOWN_PAIR, f"pair {member!r} is not in group {name!r}"
                    )
            await self._set_members(scope, name, [m for m in current if m not in members])
            for member in members:
                pair = self.pairs.get((scope, member))
                if pair is not None:
                    pair.group = None
        return self.group_status(name, scope)

    async def delete_group(self, name: str, scope: str) -> None:
        """Forget the group; its pairs stay as they are."""
        async with self._lock:
            members = self._members(scope, name)
            await self._set_members(scope, name, None)
            for member in members:
                pair = self.pairs.get((scope, member))
                if pair is not None and pair.group == name:
                    pair.group = None

    async def split_group(self, name: str, scope: str) -> builtins.list[Pair]:
        """Split every pair of the group at one instant. Every member is checked first:
        one that may not split (SUSPENDED, already split...) refuses the whole split
        (PairError WRONG_STATE naming it) and nothing changes. The instant is one step of
        the event loop, with no await inside: a host write that reached a member before
        it is in every image, one that comes after is in none. Then one record of the
        split is written (one sync, backing/pairs/group_log.py) and the split is
        answered; the members' headers follow in the background."""
        key = (scope, name)
        async with self._group_ops.setdefault(key, asyncio.Lock()):
            pairs = [await self.shared.here(p) for p in self.group_pairs(name, scope)]
            if any(self.shared.is_shared(p.target) for p in pairs):
                # The gateway that split the group may have died half way: its split
                # record (which a restart of it would roll back from) is in its own state
                # dir, out of reach here, so the members' records are the evidence.
                await self._roll_back_unanswered(name, pairs)
            glog = await self._group_log(scope, name)
            await self._settled(scope, name)  # the last split's record is written
            for pair in pairs:
                try:
                    next_phase(pair.phase, Event.SPLIT)
                except PairError as err:
                    raise PairError(
                        ErrorCode.WRONG_STATE,
                        f"group {name!r} not split: pair {pair.name!r}: {err}",
                        phase=err.phase,
                    ) from None
            when = time.time()
            token = uuid.uuid4().hex
            for pair in pairs:
                pair.split_now(when, token)
            record = SplitRecord(token, when, tuple(p.name for p in pairs))
            try:
                await glog.commit(record)
            except Exception as err:
                # Not durable: nothing says the split happened, so nothing may rely on it.
                for pair in pairs:
                    await pair.fail(SuspendReason.PAIR_FILE_ERROR, err)
                raise
            finally:
                if glog.record is record:
                    self._settling[key] = asyncio.ensure_future(
                        self._settle_split(glog, record, pairs)
                    )
            if any(self.shared.is_shared(p.target) for p in pairs):
                # A pair whose record is in the cluster is resumed by the other gateway,
                # which never sees this gateway's split record: its header must carry the
                # split before the answer, as it did before the record existed.
                failures = await asyncio.shield(self._settling[key])
                if failures:
                    raise failures[0]
            return pairs

    async def _settle_split(
        self, glog: GroupLog, record: SplitRecord, pairs: builtins.list[Pair]
    ) -> builtins.list[BaseException]:
        """After the split is answered: every member's header, then the record again with
        the members whose header is durable no longer pending. Returns the header writes'
        failures."""
        results = await asyncio.gather(
            *(pair.write_header() for pair in pairs), return_exceptions=True
        )
        behind: builtins.list[str] = []
        for pair, result in zip(pairs, results, strict=True):
            if isinstance(result, BaseException):
                # Still pending in the record: a restart brings the header up to date.
                behind.append(pair.name)
                log.error("pair %s: writing its group split failed: %r", pair.name, result)
                if isinstance(result, Exception):
                    await pair.fail(SuspendReason.PAIR_FILE_ERROR, result)
        if glog.record is record and glog.fd >= 0:
            try:
                await glog.commit(SplitRecord(record.token, record.split_time, tuple(behind)))
            except Exception:  # the record stays as it was: a restart finds the headers
                log.exception("group split record %s: marking it settled failed", glog.path)
        return [r for r in results if isinstance(r, BaseException)]

    async def resync_group(self, name: str, scope: str) -> builtins.list[Pair]:
        """Every member that is split or SUSPENDED resyncs; members already mirroring are
        left as they are (so a resync interrupted by a crash can be asked again)."""
        async with self._group_ops.setdefault((scope, name), asyncio.Lock()):
            return await self._resync_group(name, scope)

    async def _resync_group(self, name: str, scope: str) -> builtins.list[Pair]:
        pairs = [await self.shared.here(p) for p in self.group_pairs(name, scope)]
        for pair in pairs:
            if pair.phase is Phase.DELETE:
                raise PairError(
                    ErrorCode.WRONG_STATE,
                    f"group {name!r} not resynced: pair {pair.name!r} is being deleted",
                    phase=pair.phase,
                )
        todo = [p for p in pairs if not p.phase.mirroring]
        await asyncio.gather(*(pair.resync() for pair in todo))
        return pairs

    async def reverse_resync_group(self, name: str, scope: str) -> builtins.list[Pair]:
        """Restore every member's source from its target, all or nothing: each member must
        be SPLIT (checked before any changes)."""
        async with self._group_ops.setdefault((scope, name), asyncio.Lock()):
            return await self._reverse_resync_group(name, scope)

    async def _reverse_resync_group(self, name: str, scope: str) -> builtins.list[Pair]:
        pairs = [await self.shared.here(p) for p in self.group_pairs(name, scope)]
        for pair in pairs:
            try:
                next_phase(pair.phase, Event.REVERSE)
            except PairError as err:
                raise PairError(
                    ErrorCode.WRONG_STATE,
                    f"group {name!r} not restored: pair {pair.name!r}: {err}",
                    phase=err.phase,
                ) from None
        await asyncio.gather(*(pair.reverse_resync() for pair in pairs))
        return pairs

    def _volume(self, volume_id: str) -> PairVolume:
        volume = self.volumes.get(volume_id)
        if volume is None:
            raise PairError(ErrorCode.UNKNOWN_VOLUME, f"no volume {volume_id!r}")
        return volume
