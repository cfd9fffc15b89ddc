"""Consistency groups of a manager's pairs: membership (``groups.json``), the group
split record (``<group>.group``, backing/pairs/group_log.py) read and rolled forward or
back at start, and the group operations: one split instant for every member, resync,
reverse resync (docs/pairs.md, "Consistency groups").

:class:`GroupOps` is part of :class:`backing.pairs.manager.PairManager`.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from backing.pairs import groups as group_file
from backing.pairs.engine import Pair
from backing.pairs.group_log import SUFFIX as GROUP_LOG_SUFFIX
from backing.pairs.group_log import GroupLog, SplitRecord
from backing.pairs.groups import GROUPS_FILE, GroupStatus
from backing.pairs.journal import PairFile
from backing.pairs.states import NAME, ErrorCode, Event, PairError, Phase, SuspendReason, next_phase
from backing.pairs.volume import scope_of

if TYPE_CHECKING:
    from backing.pairs.shared import SharedPairs

log = logging.getLogger("backing.pairs.manager")

SPLIT_PHASES = (Phase.SPLIT_PENDING, Phase.SPLIT)
# A pair may join a group in these phases only: a split one carries another split instant.
JOINABLE = frozenset({Phase.DUPLEX_PENDING, Phase.DUPLEX, Phase.RESYNC, Phase.SUSPENDED})


class GroupOps:
    """The consistency groups' part of the pair manager (its state lives there)."""

    dir: Path
    pairs: dict[tuple[str, str], Pair]
    groups: dict[tuple[str, str], list[str]]
    group_logs: dict[tuple[str, str], GroupLog]
    shared: SharedPairs
    _lock: asyncio.Lock
    _groups_loaded: set[str]
    _behind: dict[tuple[str, str], tuple[str, SplitRecord]]
    _settling: dict[tuple[str, str], asyncio.Task[builtins.list[BaseException]]]
    _group_ops: dict[tuple[str, str], asyncio.Lock]

    if TYPE_CHECKING:  # the manager's own, for the type checker

        def _owns(self, directory: Path) -> bool: ...

    # -- at start: the split records, membership, and splits a crash cut short ------------
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
            _every_pair_can(pairs, Event.SPLIT, f"group {name!r} not split")
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
        _every_pair_can(pairs, Event.REVERSE, f"group {name!r} not restored")
        await asyncio.gather(*(pair.reverse_resync() for pair in pairs))
        return pairs


def _every_pair_can(pairs: Iterable[Pair], event: Event, refusal: str) -> None:
    """Checks every member before any changes: a group acts on all its pairs or on none."""
    for pair in pairs:
        try:
            next_phase(pair.phase, event)
        except PairError as err:
            raise PairError(
                ErrorCode.WRONG_STATE, f"{refusal}: pair {pair.name!r}: {err}", phase=err.phase
            ) from None
