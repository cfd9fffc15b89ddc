"""Volume pairs on the admin socket (``targetctl pair ...``) and in the Prometheus metrics.

Methods, each taking a params object and answering JSON (docs/pairs.md, "targetctl"):

``pair.create``  {name, source_lun, target_lun, target?, force?} -> a pair status object
``pair.split`` / ``pair.resync`` {name, target?, force?} -> a pair status object
``pair.delete``  {name, target?} -> {"deleted": name}
``pair.status``  {name?, target?} -> one pair status object, or a list of them without a name
``pair.list``    {target?} -> a list of pair status objects
``pair.wait``    {name, state, timeout, target?} -> {"reached": bool, "status": object | null}
``pair.policy``  {name, policy, target?} -> a pair status object (``policy``: reflect-first,
                 wait, merge, split-and-backup, or ``default`` for the configured one)

Pair names are per target: ``target`` names it where a name alone is ambiguous
(``ambiguous-name``). Every method goes through the daemon's one
:class:`backing.pairs.PairService`. The admin socket is an initiator that holds no
reservation: create, split and resync onto a LU that another initiator has reserved are
refused (``reservation-conflict``) unless ``force`` is true.

``pair.wait`` returns at once when both volumes are in ``state``, when the pair is
SUSPENDED (a wait that can only end by a resync), or after ``timeout`` seconds (at most
:data:`MAX_WAIT`, so one answer never outlives the client's socket timeout); a client that
waits longer asks again. Refusals answer with the :class:`ErrorCode` value as the error
code (``unknown-pair``, ``wrong-state``, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from backing.pairs import BackupPolicy, PairError, PairService, PairStatus, VolumeState
from backing.pairs.manager import scope_of
from scsi.command import Nexus
from scsi.logical_unit import LogicalUnit
from scsi.pair_commands import NexusAccess
from targetd.admin import Admin, AdminError
from targetd.config import Config
from targetd.metrics import Family
from targetd.pairs import TargetPairs, volume_id

# The admin socket as the reservations see it: a nexus no initiator can be.
ADMIN_NEXUS = Nexus("targetctl (admin socket)")

MAX_WAIT = 10.0
Params = dict[str, Any]


def lun_of(volume: str) -> int | None:
    """The LUN number in a volume id ``<iqn>/lun<N>``."""
    _, _, tail = volume.rpartition("/lun")
    return int(tail) if tail.isdigit() else None


def pair_dict(status: PairStatus) -> dict[str, Any]:
    """A pair's status as JSON: :meth:`PairStatus.as_dict` plus the LUN numbers."""
    out = status.as_dict()
    out["source_lun"] = lun_of(status.source)
    out["target_lun"] = lun_of(status.target)
    return out


def parse_state(text: str) -> VolumeState:
    """``split-pending``, ``SPLIT_PENDING``, ``Split-Pending``: one VolumeState."""
    try:
        return VolumeState[text.strip().upper().replace("-", "_")]
    except KeyError:
        names = ", ".join(s.label for s in VolumeState)
        raise ValueError(f"unknown state {text!r} (one of {names})") from None


def _str(params: Params, key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise AdminError(f"{key}: a non-empty string is required", "bad_request")
    return value


def _lun(params: Params, key: str) -> int:
    value = params.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 0x4000:
        raise AdminError(f"{key}: a LUN number 0..16383 is required", "bad_request")
    return value


DEFAULT_POLICY = "default"  # the pair follows the configured policy again


def parse_policy(text: str) -> BackupPolicy | None:
    """A backup policy name (or number); ``default`` is None: the configured policy."""
    if text.strip().lower() == DEFAULT_POLICY:
        return None
    return BackupPolicy.parse(text)


def _policy(params: Params) -> BackupPolicy | None:
    try:
        return parse_policy(_str(params, "policy"))
    except ValueError as err:
        raise AdminError(str(err), "bad-policy") from None


class AdminAccess:
    """The admin socket's :class:`backing.pairs.Access`: an initiator with no reservation
    and no registration (:data:`ADMIN_NEXUS`), unless ``force`` overrides reservations."""

    def __init__(
        self,
        controls: Mapping[str, TargetPairs],
        lun_map: Callable[[str], Mapping[int, LogicalUnit]],
        *,
        force: bool,
    ) -> None:
        self.controls = controls
        self.lun_map = lun_map
        self.force = force

    def check(self, reads: Sequence[str], writes: Sequence[str]) -> None:
        if self.force:
            return
        for volume in (*reads, *writes):
            target = scope_of(volume)
            control = self.controls.get(target)
            if control is None:
                continue  # not a LUN of a served target: the service refuses it itself
            access = NexusAccess(ADMIN_NEXUS, control, self.lun_map(target))
            try:
                if volume in reads:
                    access.check((volume,), ())
                if volume in writes:
                    access.check((), (volume,))
            except PairError as err:
                raise PairError(err.code, f"{err} (--force overrides)") from None


class PairAdmin:
    """The admin methods over the daemon's :class:`PairService`.

    ``config`` is asked for the running configuration at each call (a reload may add
    targets); ``controls`` and ``lun_map`` give each target's LUs, for reservations.
    """

    def __init__(
        self,
        service: PairService,
        config: Callable[[], Config],
        controls: Mapping[str, TargetPairs],
        lun_map: Callable[[str], Mapping[int, LogicalUnit]],
    ) -> None:
        self.service = service
        self._config = config
        self.controls = controls
        self.lun_map = lun_map

    @property
    def config(self) -> Config:
        return self._config()

    def _access(self, params: Params) -> AdminAccess:
        force = params.get("force", False)
        if not isinstance(force, bool):
            raise AdminError("force: true or false", "bad_request")
        return AdminAccess(self.controls, self.lun_map, force=force)

    def _scope(self, params: Params) -> str | None:
        """The target a pair name is looked up in (None: any, if unambiguous)."""
        name = params.get("target")
        if name is None:
            return None
        if not isinstance(name, str) or self.config.target(name) is None:
            raise AdminError(f"no target named {name!r}", "unknown-target")
        return name

    def register(self, admin: Admin) -> None:
        methods: dict[str, Callable[[Params], Awaitable[Any] | Any]] = {
            "pair.create": self.create,
            "pair.split": self.split,
            "pair.resync": self.resync,
            "pair.restore": self.restore,
            "pair.delete": self.delete,
            "pair.status": self.status,
            "pair.list": self.list_pairs,
            "pair.wait": self.wait,
            "pair.policy": self.policy,
        }
        for method, handler in methods.items():
            admin.register(method, handler)

    def _target(self, params: Params) -> str:
        name = params.get("target")
        if name is not None:
            if not isinstance(name, str) or self.config.target(name) is None:
                raise AdminError(f"no target named {name!r}", "unknown-target")
            return name
        if len(self.config.targets) != 1:
            names = ", ".join(t.name for t in self.config.targets) or "none"
            raise AdminError(f"several targets ({names}): name one with --target", "bad_request")
        return self.config.targets[0].name

    def _require_volume(self, target: str, lun: int) -> None:
        """The LUN a pair is asked to have exists and is a block volume: said in the
        operator's words (the pair service knows only volume ids: "no volume 'T/lun2'")."""
        config = self.config.target(target)
        found = None if config is None else next((u for u in config.luns if u.lun == lun), None)
        if found is None:
            raise AdminError(f"target {target} has no LUN {lun}", "bad_request")
        if found.kind not in ("block", "rbd"):
            raise AdminError(
                f"LUN {lun} of {target} is a {found.kind}: a pair mirrors block volumes",
                "bad_request",
            )

    async def create(self, params: Params) -> dict[str, Any]:
        name = _str(params, "name")
        target = self._target(params)
        source_lun, target_lun = _lun(params, "source_lun"), _lun(params, "target_lun")
        policy = _policy(params) if params.get("policy") is not None else None
        for lun in (source_lun, target_lun):
            self._require_volume(target, lun)
        access = self._access(params)
        with _refusals():
            status = await self.service.create(
                name,
                volume_id(target, source_lun),
                volume_id(target, target_lun),
                policy,
                access=access,
            )
        return pair_dict(status)

    async def split(self, params: Params) -> dict[str, Any]:
        name, scope, access = _str(params, "name"), self._scope(params), self._access(params)
        with _refusals():
            return pair_dict(await self.service.split(access=access, name=name, scope=scope))

    async def resync(self, params: Params) -> dict[str, Any]:
        name, scope, access = _str(params, "name"), self._scope(params), self._access(params)
        with _refusals():
            return pair_dict(await self.service.resync(access=access, name=name, scope=scope))

    async def restore(self, params: Params) -> dict[str, Any]:
        name, scope, access = _str(params, "name"), self._scope(params), self._access(params)
        with _refusals():
            status = await self.service.reverse_resync(access=access, name=name, scope=scope)
        return pair_dict(status)

    async def policy(self, params: Params) -> dict[str, Any]:
        name, scope, access = _str(params, "name"), self._scope(params), self._access(params)
        policy = _policy(params)
        with _refusals():
            status = await self.service.set_backup_policy(
                policy, access=access, name=name, scope=scope
            )
        return pair_dict(status)

    async def delete(self, params: Params) -> dict[str, Any]:
        name, scope, access = _str(params, "name"), self._scope(params), self._access(params)
        with _refusals():
            await self.service.delete(access=access, name=name, scope=scope)
        return {"deleted": name}

    def status(self, params: Params) -> dict[str, Any] | list[dict[str, Any]]:
        if params.get("name") is None:
            return self.list_pairs(params)
        name, scope = _str(params, "name"), self._scope(params)
        with _refusals():
            return pair_dict(self.service.status(name=name, scope=scope))

    def list_pairs(self, params: Params) -> list[dict[str, Any]]:
        return [pair_dict(s) for s in self.service.list_pairs(self._scope(params))]

    async def wait(self, params: Params) -> dict[str, Any]:
        name = _str(params, "name")
        try:
            state = parse_state(_str(params, "state"))
        except ValueError as err:
            raise AdminError(str(err), "bad_request") from None
        timeout = params.get("timeout", MAX_WAIT)
        if not isinstance(timeout, int | float) or timeout < 0:
            raise AdminError("timeout: seconds, >= 0", "bad_request")
        scope = self._scope(params)
        with _refusals():
            reached, status = await self.service.wait(
                state, min(float(timeout), MAX_WAIT), name=name, scope=scope
            )
        return {"reached": reached, "status": None if status is None else pair_dict(status)}

    # -- metrics --------------------------------------------------------------------------
    def metric_families(self) -> list[Family]:
        state = Family(
            "targetd_pair_state",
            "gauge",
            "1 for each pair volume's current state (side=source|target)",
        )
        dirty = Family("targetd_pair_dirty_chunks", "gauge", "chunks the target does not have yet")
        changed = Family("targetd_pair_changed_chunks", "gauge", "chunks written since the split")
        backlog = Family("targetd_pair_backlog_bytes", "gauge", "bytes still to copy to the target")
        in_sync = Family("targetd_pair_in_sync_ratio", "gauge", "fraction of chunks in sync")
        rate = Family("targetd_pair_copy_rate_bytes_per_second", "gauge", "copy rate, last 5 s")
        copied = Family(
            "targetd_pair_copied_bytes_total", "counter", "bytes copied since the daemon started"
        )
        runs = Family(
            "targetd_pair_runs_here",
            "gauge",
            "two gateways: 1 while this gateway runs the pair, 0 while it only shows it",
        )
        for s in self.service.list_pairs():
            labels = {"pair": s.name, "target": scope_of(s.source)}
            for side, current in (("source", s.phase.source), ("target", s.phase.target)):
                state.add(1, {**labels, "side": side, "state": current.label})
            dirty.add(s.dirty_chunks, labels)
            changed.add(s.changed_chunks, labels)
            backlog.add(min(s.dirty_chunks * s.chunk_size, s.size), labels)
            in_sync.add(s.percent_in_sync / 100, labels)
            rate.add(float(s.copy_rate), labels)
            copied.add(s.copied_bytes, labels)
            here = self.service.runs_here(s.target)
            if here is not None:
                runs.add(int(here), labels)
        shared = [runs] if runs.samples else []  # only where pairs are shared
        return [state, dirty, changed, backlog, in_sync, rate, copied, *shared]


@contextlib.contextmanager
def _refusals() -> Any:
    """A :class:`PairError` answers with its code (``unknown-pair``, ``wrong-state``...)."""
    try:
        yield
    except PairError as err:
        raise AdminError(str(err), err.code.value) from None
