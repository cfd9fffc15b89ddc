"""A pair's split-instant snapshot of its source (a store that can snapshot itself: an
RBD image, docs/rbd.md): taken once the writes that began before the split have ended,
named in the header before any write relies on it, read by the copies of the split set,
reopened after a restart and removed once the split set is reflected.

:class:`SplitSnapshot` is part of :class:`backing.pairs.engine.Pair`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from backing.pairs.states import Phase, SuspendReason

if TYPE_CHECKING:
    from backing.pairs.volume import PairVolume

log = logging.getLogger("backing.pairs.engine")

# The names of a pair's split-instant snapshots of its source (an RBD image).
SPLIT_SNAPSHOT_PREFIX = "targetd-split-"


class SplitSnapshot:
    """The split snapshot's part of a pair (its state lives on the pair)."""

    name: str
    phase: Phase
    source: PairVolume
    split_snapshot: str | None
    _frozen: Any
    _taking: str | None
    _splits: int
    _entered: dict[int, int]
    _entered_changed: asyncio.Event
    _snapshot_tasks: set[asyncio.Task[None]]

    if TYPE_CHECKING:  # the pair's own, for the type checker

        async def _write_header(self) -> None: ...

        async def _fail(self, reason: SuspendReason, err: BaseException) -> None: ...

    def _split_source(self) -> Any:
        """Where the split set's split-instant content is: the snapshot once it is open,
        else the source image (kept so by copy-before-write)."""
        return self._frozen if self._frozen is not None else self.source.base

    def _in_background(self, body: Awaitable[None]) -> None:
        task = asyncio.ensure_future(body)
        self._snapshot_tasks.add(task)
        task.add_done_callback(self._snapshot_tasks.discard)

    async def _freeze_source(self, splits: int) -> None:
        """Snapshot the source for split number ``splits``, once every host write that
        began before it has finished (the split image holds them, as copies wait for them).
        Until the snapshot is open, copy-before-write keeps the split set on the image;
        the snapshot's name is durable before any write relies on it.

        The seam, on the source's store (``RbdImage``): ``freeze(name)`` takes the snapshot
        and returns a read-only view of it (``read_into``, ``extents``, ``aclose``);
        ``open_frozen(name)`` opens it again after a restart; ``thaw(view, name)`` closes
        the view and removes the snapshot."""
        while any(began < splits for began in self._entered):
            self._entered_changed.clear()
            await self._entered_changed.wait()
        if self._splits != splits or self.phase is not Phase.SPLIT_PENDING:
            return
        name = f"{SPLIT_SNAPSHOT_PREFIX}{time.time_ns():x}"
        base: Any = self.source.base
        self._taking = name
        try:
            frozen = await base.freeze(name)
        except Exception:
            log.exception("pair %s: no split snapshot; copy-before-write instead", self.name)
            return
        finally:
            self._taking = None
        if self._splits != splits or self.phase is not Phase.SPLIT_PENDING:
            await base.thaw(frozen, name)
            return
        self.split_snapshot = name
        try:
            await self._write_header()
        except Exception as err:
            self.split_snapshot = None
            await self._fail(SuspendReason.PAIR_FILE_ERROR, err)
            await base.thaw(frozen, name)
            return
        if self.phase is Phase.SPLIT_PENDING and self.split_snapshot == name:
            self._frozen = frozen
        log.info("pair %s: split set read from snapshot %s", self.name, name)

    async def _drop_snapshot(self) -> None:
        """The split set is reflected (or abandoned): remove the snapshot, then forget it."""
        frozen, self._frozen = self._frozen, None
        name = self.split_snapshot
        base: Any = self.source.base
        if name is None:
            if frozen is not None:
                await frozen.aclose()
            return
        try:
            await base.thaw(frozen, name)
        except Exception:  # named in the header still: removed at the next start
            log.exception("pair %s: removing snapshot %s failed", self.name, name)
            return
        if self.split_snapshot == name and self.phase is not Phase.SPLIT_PENDING:
            self.split_snapshot = None
            if self.phase is not Phase.DELETE:
                await self._write_header()

    async def _remove_stray_snapshots(self) -> None:
        """Remove the source's split snapshots that the pair file does not name: a kill -9
        (or a failed header write) between taking one and recording it leaves it behind,
        and no later split would ever remove it. Those another pair of the same primary
        names are its own."""
        base: Any = self.source.base
        if getattr(base, "snapshot_names", None) is None:
            return
        try:
            names = await base.snapshot_names()
        except Exception:
            log.exception("pair %s: listing the source's snapshots failed", self.name)
            return
        # Every pair of the source is attached before any starts (PairManager.start).
        kept = {n for p in self.source.pairs for n in (p.split_snapshot, p._taking)}
        for name in names:
            if not name.startswith(SPLIT_SNAPSHOT_PREFIX) or name in kept:
                continue
            try:
                await base.thaw(None, name)
            except Exception:
                log.exception("pair %s: removing stray snapshot %s failed", self.name, name)
            else:
                log.info("pair %s: removed stray split snapshot %s", self.name, name)

    async def _resume_snapshot(self) -> None:
        """After a restart: reopen the snapshot of a split still reflecting (host writes
        may have skipped copy-before-write, so only the snapshot holds the split image),
        or remove one left by a split that finished."""
        name = self.split_snapshot
        assert name is not None
        base: Any = self.source.base
        if self.phase is not Phase.SPLIT_PENDING:
            if getattr(base, "thaw", None) is not None:
                self._in_background(self._drop_snapshot())
            return
        try:
            self._frozen = await base.open_frozen(name)
        except Exception as err:
            await self._fail(SuspendReason.SOURCE_READ_ERROR, err)
