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
import logging
import re
from pathlib import Path
from urllib.parse import quote

from backing.pairs.bitmap import PAGE_BITS, ChunkBitmap
from backing.pairs.engine import Pair, PairSettings, PairStatus
from backing.pairs.journal import REGIONS, PairFile, PairFileError
from backing.pairs.states import (
    BackupPolicy,
    ErrorCode,
    PairError,
    Phase,
    SuspendReason,
    VolumeState,
)
from backing.pairs.volume import PairVolume

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


def scope_of(volume_id: str) -> str:
    """The scope of a volume id ``<scope>/<volume>`` ("" without a slash)."""
    return volume_id.rpartition("/")[0]


class PairManager:
    def __init__(self, state_dir: Path, settings: PairSettings | None = None) -> None:
        self.dir = Path(state_dir) / "pairs"
        self.settings = settings or PairSettings()
        self.volumes: dict[str, PairVolume] = {}
        self.pairs: dict[tuple[str, str], Pair] = {}  # by (scope, name)
        self._lock = asyncio.Lock()  # one create/delete at a time: they check then act

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
        """Load every pair file and resume its copying (after a restart or a kill -9)."""
        if not self.dir.is_dir():
            return
        for path in sorted([*self.dir.glob("*.pair"), *self.dir.glob("*/*.pair")]):
            try:
                pair_file, meta, bitmaps = PairFile.open(path)
            except (OSError, PairFileError, ValueError, KeyError) as err:
                log.error("pair file %s unreadable, ignored: %s", path, err)
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
            pair = Pair(meta, source, target, pair_file, bitmaps, self.settings)
            pair.attach()
            self.pairs[(scope_of(pair.source.volume_id), pair.name)] = pair
            await pair.start()
            status = pair.status()
            log.info(
                "pair %s resumed: %s/%s, %d chunks to copy",
                pair.name,
                status.phase.source.label,
                status.phase.target.label,
                status.dirty_chunks,
            )

    async def stop(self) -> None:
        for pair in self.pairs.values():
            await pair.stop()
            pair.file.close()

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
        """The pair ``volume_id`` belongs to (as source or target), if any."""
        volume = self.volumes.get(volume_id)
        return None if volume is None else volume.pair

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
            for volume in (source, target):
                if volume.pair is not None:
                    raise PairError(
                        ErrorCode.VOLUME_IN_PAIR,
                        f"{volume.volume_id} is in pair {volume.pair.name}",
                    )
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
        pair = self.get(name, scope)
        await pair.split()
        return pair.status()

    async def resync(self, name: str, scope: str | None = None) -> PairStatus:
        pair = self.get(name, scope)
        await pair.resync()
        return pair.status()

    async def set_backup_policy(
        self, name: str, policy: BackupPolicy | None, scope: str | None = None
    ) -> PairStatus:
        """The pair's own backup policy, kept in its file; None: the configured one."""
        pair = self.get(name, scope)
        await pair.set_backup_policy(policy)
        return pair.status()

    async def delete(self, name: str, scope: str | None = None) -> None:
        async with self._lock:
            pair = self.get(name, scope)
            await pair.delete()
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
