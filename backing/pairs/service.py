"""PairService: THE one entry point for volume-pair operations.

Every caller goes through one :class:`PairService` and nothing else of ``backing.pairs``'
insides: the vendor PAIR IN/OUT commands (``scsi/pair_commands.py``), ``targetctl pair``
over the admin socket (``targetd/pair_admin.py``) and EXTENDED COPY (``xcopy/``: the SPLIT
PAIR segment and backups of a pair's target volume). Callers name volumes by id and pairs
by name (within a scope, see :mod:`backing.pairs.manager`) or by one of their volumes.

Each operation that moves data asks the caller's :class:`Access` first, for EVERY volume
it reads or writes, not just the one the caller addressed: a split or resync addressed
through the source also writes the target. What each operation touches:

=============  ===========  ============
operation      reads        writes
=============  ===========  ============
create         source       target (the creation copy overwrites it)
split          source       target (the split-instant set is reflected onto it)
resync         source       target (the target's own changes are copied over)
delete         --           --
backup policy  --           --
=============  ===========  ============

The :class:`Access` raises :class:`PairError` with ``RESERVATION_CONFLICT`` to refuse;
the SCSI layer answers RESERVATION CONFLICT, the admin socket ``reservation-conflict``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from backing.pairs.engine import Pair, PairSettings, PairStatus
from backing.pairs.groups import GroupStatus
from backing.pairs.manager import PairManager, scope_of
from backing.pairs.states import BackupPolicy, ErrorCode, PairError, Phase, VolumeState
from backing.pairs.volume import PairVolume
from backing.sparse_file import Extent

SPLIT_PHASES = (Phase.SPLIT_PENDING, Phase.SPLIT)


class Access(Protocol):
    """Who asks: may it read ``reads`` and write ``writes`` (volume ids)? Raises
    :class:`PairError` (``RESERVATION_CONFLICT``) if not; returns None if it may."""

    def check(self, reads: Sequence[str], writes: Sequence[str]) -> None: ...


class Unchecked:
    """An :class:`Access` that allows everything: in-process tools and unit tests only."""

    def check(self, reads: Sequence[str], writes: Sequence[str]) -> None:
        return None


UNCHECKED = Unchecked()


class PairService:
    """Pair operations, checked against the caller's access, over one :class:`PairManager`.

    Pairs are named by ``name`` (with ``scope``: the target's name in the daemon; without
    it the one pair of that name) or by ``volume``: the id of either of its volumes.
    """

    def __init__(self, manager: PairManager) -> None:
        self.manager = manager

    # -- volumes and life cycle (the daemon's wiring) ---------------------------------------
    def register_volume(self, volume: PairVolume) -> None:
        self.manager.register_volume(volume)

    def unregister_volume(self, volume_id: str) -> None:
        """Raises PairError (VOLUME_IN_PAIR) while the volume is in a pair."""
        self.manager.unregister_volume(volume_id)

    def has_volume(self, volume_id: str) -> bool:
        return volume_id in self.manager.volumes

    async def start(self) -> None:
        await self.manager.start()

    async def stop(self) -> None:
        await self.manager.stop()

    def apply_settings(self, settings: PairSettings) -> None:
        """A reload's ``[pairs]`` settings: every pair follows them from now on."""
        self.manager.apply_settings(settings)

    # -- two gateways: pairs run where their source's lock is (backing/pairs/shared.py) --------
    async def run_here(self, volume_id: str) -> None:
        """This gateway took ``volume_id``'s lock: the pairs whose source it is run here."""
        await self.manager.shared.run_here(volume_id)

    async def hand_over(self, volume_id: str) -> None:
        """This gateway gives ``volume_id``'s lock up (or lost it): its pairs stop here."""
        await self.manager.shared.hand_over(volume_id)

    async def follow_target(self, volume_id: str) -> None:
        """A host write here to the target of a pair the other gateway runs: the pair
        comes here first."""
        await self.manager.shared.follow_target(volume_id)

    def runs_here(self, target: str) -> bool | None:
        """Whether this gateway runs the pair whose target volume is ``target``; None for
        a pair that is not shared by two gateways."""
        volume = self.manager.volumes.get(target)
        if volume is None or not self.manager.shared.is_shared(volume):
            return None
        return target in self.manager.shared.running

    def holds(self, volume_id: str, why: str) -> bool:
        """Whether a pair running here keeps ``volume_id``'s lock against the other gateway."""
        return self.manager.shared.holds(volume_id, why)

    # -- finding pairs ------------------------------------------------------------------------
    def find(
        self, *, name: str | None = None, scope: str | None = None, volume: str | None = None
    ) -> Pair:
        """The pair named ``name`` (in ``scope``), or the one ``volume`` is in."""
        if volume is not None:
            pairs = self.manager.pairs_of(volume)
            if not pairs:
                raise PairError(ErrorCode.UNKNOWN_PAIR, f"{volume} is not in a pair")
            if len(pairs) > 1:
                names = ", ".join(f"{p.name} (secondary {p.target.volume_id})" for p in pairs)
                raise PairError(
                    ErrorCode.AMBIGUOUS_VOLUME,
                    f"{volume} is the primary of {len(pairs)} pairs: {names}; name the pair"
                    " or its secondary",
                )
            return pairs[0]
        if name is None:
            raise PairError(ErrorCode.UNKNOWN_PAIR, "no pair named")
        return self.manager.get(name, scope)

    def pair_of(self, volume_id: str) -> Pair | None:
        """The pair ``volume_id`` is in, for reading (status, a backup's split image):
        never change a pair through it, use the operations below."""
        return self.manager.pair_of(volume_id)

    def pairs_of(self, volume_id: str) -> list[PairStatus]:
        """The status of every pair ``volume_id`` is in (a primary's: one per secondary)."""
        return [p.status() for p in self.manager.pairs_of(volume_id)]

    def status_of(self, volume_id: str) -> PairStatus | None:
        pair = self.manager.pair_of(volume_id)
        return None if pair is None else pair.status()

    def status(self, *, name: str | None = None, scope: str | None = None) -> PairStatus:
        return self.find(name=name, scope=scope).status()

    def list_pairs(self, scope: str | None = None) -> list[PairStatus]:
        return [s for s in self.manager.list() if scope is None or scope_of(s.source) == scope]

    # -- operations ---------------------------------------------------------------------------
    async def create(
        self,
        name: str,
        source: str,
        target: str,
        policy: BackupPolicy | None = None,
        *,
        access: Access,
    ) -> PairStatus:
        """A new pair ``name`` mirroring ``source`` onto ``target`` (volume ids). The pair
        is in the scope of its volumes: a name used in another scope is no obstacle."""
        for volume in (source, target):
            if not self.has_volume(volume):
                raise PairError(ErrorCode.UNKNOWN_VOLUME, f"no volume {volume!r}")
        access.check((source,), (target,))
        return await self.manager.create(name, source, target, policy)

    async def split(
        self,
        *,
        access: Access,
        name: str | None = None,
        scope: str | None = None,
        volume: str | None = None,
        keep_split: bool = False,
    ) -> PairStatus:
        """Split the pair now; a pair in a consistency group splits with its whole group
        (one instant for all of them). ``keep_split``: a pair already split (SPLIT-PENDING
        or SPLIT) keeps its split instant and nothing is done (EXTENDED COPY's SPLIT PAIR
        segment)."""
        return await self._pair_or_group(
            lambda p: p.split(),
            self.split_group,
            access,
            name,
            scope,
            volume,
            keep_split=keep_split,
        )

    async def resync(
        self,
        *,
        access: Access,
        name: str | None = None,
        scope: str | None = None,
        volume: str | None = None,
    ) -> PairStatus:
        """Resync the pair; a pair in a consistency group resyncs with its whole group."""
        return await self._pair_or_group(
            lambda p: p.resync(), self.resync_group, access, name, scope, volume
        )

    async def reverse_resync(
        self,
        *,
        access: Access,
        name: str | None = None,
        scope: str | None = None,
        volume: str | None = None,
    ) -> PairStatus:
        """Restore the source from the target of a SPLIT pair, copying only the chunks
        either side changed since the split; hosts are fenced from the source until it is
        DUPLEX again. A pair in a group restores with its whole group."""
        return await self._pair_or_group(
            lambda p: p.reverse_resync(), self.reverse_resync_group, access, name, scope, volume,
            reverse=True,
        )  # fmt: skip

    async def _pair_or_group(
        self,
        pair_op: Callable[[Pair], Awaitable[object]],
        group_op: Callable[..., Awaitable[GroupStatus]],
        access: Access,
        name: str | None,
        scope: str | None,
        volume: str | None,
        *,
        keep_split: bool = False,
        reverse: bool = False,
    ) -> PairStatus:
        """Run ``pair_op`` on the pair found, here on this gateway; a pair in a group has
        ``group_op`` run on its whole group instead. ``access`` is asked to read the source
        and write the target (the other way round for a ``reverse`` copy)."""
        pair = await self.manager.shared.here(self.find(name=name, scope=scope, volume=volume))
        if keep_split and pair.phase in SPLIT_PHASES:
            return pair.status()
        if pair.group is not None:
            await group_op(pair.group, scope_of(pair.source.volume_id), access=access)
            return pair.status()
        source, target = (pair.source.volume_id,), (pair.target.volume_id,)
        access.check(*((target, source) if reverse else (source, target)))
        await pair_op(pair)
        return pair.status()

    async def reverse_resync_group(
        self, name: str, scope: str | None = None, *, access: Access
    ) -> GroupStatus:
        """Restore every member's source from its target (each must be SPLIT)."""
        return await self._group(self.manager.reverse_resync_group, name, scope, access, True)

    async def delete(
        self,
        *,
        access: Access,
        name: str | None = None,
        scope: str | None = None,
        volume: str | None = None,
    ) -> str:
        """Delete the pair (no data moves: ``access`` is asked about no volume). Returns
        its name."""
        pair = self.find(name=name, scope=scope, volume=volume)
        access.check((), ())
        await self.manager.delete(pair.name, scope_of(pair.source.volume_id))
        return pair.name

    # -- consistency groups ------------------------------------------------------------------
    def group_status(self, name: str, scope: str | None = None) -> GroupStatus:
        return self.manager.group_status(name, scope)

    def list_groups(self, scope: str | None = None) -> list[GroupStatus]:
        return [g for g in self.manager.list_groups() if scope is None or g.scope == scope]

    async def create_group(
        self, name: str, scope: str, pairs: Sequence[str], *, access: Access
    ) -> GroupStatus:
        """A consistency group ``name`` of the pairs named (in ``scope``). Each must be
        mirroring (or SUSPENDED) and in no other group. Kept across restarts."""
        access.check((), ())
        return await self.manager.create_group(name, scope, list(pairs))

    async def add_to_group(
        self, name: str, pairs: Sequence[str], *, access: Access, scope: str | None = None
    ) -> GroupStatus:
        scope = self.manager.group_scope(name, scope)
        access.check((), ())
        return await self.manager.add_to_group(name, scope, list(pairs))

    async def remove_from_group(
        self, name: str, pairs: Sequence[str], *, access: Access, scope: str | None = None
    ) -> GroupStatus:
        scope = self.manager.group_scope(name, scope)
        access.check((), ())
        return await self.manager.remove_from_group(name, scope, list(pairs))

    async def join_group(self, name: str, *, access: Access, volume: str) -> GroupStatus:
        """The pair ``volume`` is in joins group ``name`` of its scope, which is made if it
        does not exist (as an array's pair tooling does: ``paircreate -g``). Already a
        member: nothing changes. The rules of :meth:`add_to_group` otherwise."""
        pair = self.find(volume=volume)
        scope = scope_of(pair.source.volume_id)
        access.check((), ())
        if (scope, name) not in self.manager.groups:
            try:
                return await self.manager.create_group(name, scope, [pair.name])
            except PairError as err:  # made meanwhile by another JOIN: join it
                if err.code is not ErrorCode.NAME_IN_USE:
                    raise
        return await self.manager.add_to_group(name, scope, [pair.name])

    async def leave_group(self, *, access: Access, volume: str) -> GroupStatus | None:
        """The pair ``volume`` is in leaves its group (it stays a pair); a group left with
        no member goes too. None when the pair was in no group (nothing changes)."""
        pair = self.find(volume=volume)
        access.check((), ())
        if pair.group is None:
            return None
        scope = scope_of(pair.source.volume_id)
        status = await self.manager.remove_from_group(pair.group, scope, [pair.name])
        if not self.manager.groups.get((scope, status.name)):
            await self.manager.delete_group(status.name, scope)
        return status

    async def delete_group(self, name: str, *, access: Access, scope: str | None = None) -> str:
        """Forget the group (its pairs stay as they are). Returns its name."""
        scope = self.manager.group_scope(name, scope)
        access.check((), ())
        await self.manager.delete_group(name, scope)
        return name

    async def split_group(
        self, name: str, scope: str | None = None, *, access: Access
    ) -> GroupStatus:
        """Split every pair of the group at one instant (docs/pairs.md, "Consistency
        groups"). All or nothing: ``access`` is asked about every member's volumes and
        every member's state is checked before any pair changes."""
        return await self._group(self.manager.split_group, name, scope, access)

    async def resync_group(
        self, name: str, scope: str | None = None, *, access: Access
    ) -> GroupStatus:
        """Resync every split or SUSPENDED pair of the group (those mirroring stay)."""
        return await self._group(self.manager.resync_group, name, scope, access)

    async def _group(
        self,
        group_op: Callable[[str, str], Awaitable[object]],
        name: str,
        scope: str | None,
        access: Access,
        reverse: bool = False,
    ) -> GroupStatus:
        """``group_op`` on the group, once ``access`` allows reading every member's source
        and writing its target (the other way round for a ``reverse`` copy)."""
        scope = self.manager.group_scope(name, scope)
        pairs = self.manager.group_pairs(name, scope)
        sources = [p.source.volume_id for p in pairs]
        targets = [p.target.volume_id for p in pairs]
        access.check(*((targets, sources) if reverse else (sources, targets)))
        await group_op(name, scope)
        return self.manager.group_status(name, scope)

    async def set_backup_policy(
        self,
        policy: BackupPolicy | None,
        *,
        access: Access,
        name: str | None = None,
        scope: str | None = None,
        volume: str | None = None,
    ) -> PairStatus:
        """Keep ``policy`` with the pair (None: the configured one again)."""
        pair = self.find(name=name, scope=scope, volume=volume)
        access.check((), ())
        await pair.set_backup_policy(policy)
        return pair.status()

    async def wait(
        self,
        state: VolumeState,
        timeout: float,
        *,
        name: str,
        scope: str | None = None,
    ) -> tuple[bool, PairStatus | None]:
        """Wait (at most ``timeout`` s) until both volumes are in ``state``; an end sooner
        when the pair is SUSPENDED or being deleted. (reached, status); a pair that does
        not exist has reached SIMPLEX."""
        try:
            pair = self.find(name=name, scope=scope)
        except PairError as err:
            if err.code is ErrorCode.UNKNOWN_PAIR and state is VolumeState.SIMPLEX:
                return True, None
            raise

        def settled(p: Pair) -> bool:
            phase = p.phase
            reached = phase.source == state and phase.target == state
            return reached or phase in (Phase.SUSPENDED, Phase.DELETE)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pair.wait_until(settled), timeout)
        status = pair.status()
        return status.phase.source == state and status.phase.target == state, status

    # -- for EXTENDED COPY ----------------------------------------------------------------------
    def is_pair_target(self, volume: str) -> bool:
        """Whether ``volume`` is the target volume of a pair (a backup reads its split image)."""
        pair = self.manager.pair_of(volume)
        return pair is not None and pair.target.volume_id == volume

    async def split_image(
        self, volume: str, policy: BackupPolicy | None = None, *, access: Access
    ) -> SplitImage:
        """The split image of the pair whose target is ``volume``, for a backup that
        follows ``policy`` (None: the pair's own, else the configured one). With
        SPLIT_AND_BACKUP a mirroring pair is split now (then reflect-first); otherwise the
        pair must already be split (PairError WRONG_STATE)."""
        pair = self.find(volume=volume)
        if pair.target.volume_id != volume:
            raise PairError(ErrorCode.WRONG_STATE, f"{volume} is not a pair's target volume")
        pair = await self.manager.shared.here(pair)  # a backup may copy split-set chunks
        chosen = policy or pair.effective_backup_policy
        if chosen is BackupPolicy.SPLIT_AND_BACKUP:
            if pair.phase.mirroring:  # the backup takes its own split (its group's)
                await self.split(access=access, volume=pair.target.volume_id)
            chosen = BackupPolicy.REFLECT_FIRST
        if pair.phase not in SPLIT_PHASES:
            raise PairError(
                ErrorCode.WRONG_STATE,
                f"{volume} is the target of pair {pair.name}, which is {pair.phase.name}:"
                " split it first, or use a SPLIT PAIR segment",
                phase=pair.phase,
            )
        return SplitImage(pair, volume, chosen)


class SplitImage:
    """A backup's view of one split pair's target volume (EXTENDED COPY reads it), from
    :meth:`PairService.split_image`. The target LU reads as the split image at all times
    (chunks still pending come from the source); this says how far the pair is and makes
    the chunks of a range reach the target first, as the backup ``policy`` asks."""

    def __init__(self, pair: Pair, volume: str, policy: BackupPolicy) -> None:
        self._pair = pair
        self._volume = volume
        self.policy = policy
        self.name = pair.name
        self.chunk_size = pair.chunk_size

    @property
    def phase(self) -> Phase:
        return self._pair.phase

    @property
    def state(self) -> str:
        """The pair's phase by name, for messages."""
        return self._pair.phase.name

    def intact(self) -> bool:
        """The pair is still split (SPLIT-PENDING or SPLIT) and still this volume's: the
        image read so far is the split-instant one."""
        pair = self._pair
        return (
            pair.target.volume_id == self._volume
            and pair.target.pair is pair
            and (pair.phase in SPLIT_PHASES)
        )

    @property
    def reflected(self) -> bool:
        """Every chunk of the split image is on the target (SPLIT)."""
        return self._pair.phase is Phase.SPLIT

    async def wait_reflected(self) -> None:
        """Until the pair is no longer SPLIT-PENDING (SPLIT, or it left the split state)."""
        await self._pair.wait_until(lambda p: p.phase is not Phase.SPLIT_PENDING)

    async def reflect(self, offset: int, length: int) -> None:
        """Copy the pending chunks of ``[offset, offset + length)`` to the target now."""
        await self._pair.reflect_range(offset, length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Mapped and hole runs of ``[offset, offset + length)`` of the split image: the
        target's own, except that a pending chunk counts as data even where the target
        still has a hole (its split-instant content is still on the source), so a
        sparse-aware destination never punches what the source has yet to deliver."""
        pair = self._pair
        extents = pair.target.extents(offset, length)
        if pair.phase is not Phase.SPLIT_PENDING:
            return extents
        cs = pair.chunk_size
        out: list[Extent] = []
        for ext in extents:
            if ext.mapped:
                out.append(ext)
                continue
            pos, end = ext.offset, ext.offset + ext.length
            while pos < end:
                stop = min(end, (pos // cs + 1) * cs)
                mapped = pos // cs in pair.copy_set
                if out and out[-1].mapped == mapped and out[-1].offset + out[-1].length == pos:
                    last = out.pop()
                    out.append(Extent(last.offset, stop - last.offset, mapped))
                else:
                    out.append(Extent(pos, stop - pos, mapped))
                pos = stop
        return out

    def pending(self, offset: int, length: int) -> list[int]:
        """The chunk numbers of ``[offset, offset + length)`` whose split-instant content is
        still only on the source (none once SPLIT)."""
        pair = self._pair
        if pair.phase is not Phase.SPLIT_PENDING or length <= 0:
            return []
        cs = pair.chunk_size
        return [c for c in range(offset // cs, (offset + length - 1) // cs + 1)
                if c in pair.copy_set]  # fmt: skip


__all__ = ["UNCHECKED", "Access", "PairService", "SplitImage", "Unchecked"]
