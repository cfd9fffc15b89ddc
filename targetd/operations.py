"""Everything around the data path that an operator sees: the admin socket, metrics,
systemd readiness and watchdog, SIGHUP reload, and the ordered shutdown.

``targetd serve`` builds one :class:`Operations` and hands it to subsystems, which hook in
with one call each::

    ops.admin.register("pair.split", engine.split)       # a targetctl method
    ops.provide_status("pairs", engine.status_list)      # a section of `targetctl status`
    ops.metrics.add_collector(engine.metric_families)    # Prometheus families
    ops.on_shutdown(engine.persist)                      # run at SIGTERM after the drain
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from scsi.block_device import BlockDevice
from scsi.logical_unit import LogicalUnit
from scsi.sense import Reason
from targetd import logs, reload, reload_report, sdnotify, status
from targetd.admin import SOCKET_NAME, Admin
from targetd.config import Config, ConfigError, LunConfig
from targetd.luns import Builder, alua_groups, flush_targets, paired_volume, rbd_image_of
from targetd.metrics import Family, Metrics, lun_families
from targetd.reload import ReloadPlan
from targetd.reload_report import LastReload
from targetd.server import IscsiConnection, TargetRuntime, TargetServer
from targetd.stopping import Stopping
from xcopy import pacing
from xcopy.manager import CopyManager

if TYPE_CHECKING:
    from backing.rbd_image import RbdImage

log = logging.getLogger("targetd")
ShutdownHook = Callable[[], Any | Awaitable[Any]]
CLOSE_WAIT = 30.0  # seconds a removed LU waits for the commands running on it


class Operations:
    def __init__(
        self,
        server: TargetServer,
        *,
        builder: Builder | None = None,
        loader: Callable[[], Config] | None = None,
        metrics_listen: tuple[str, int] | None = None,
    ) -> None:
        self.server = server
        # The one build path, shared with the start: what a reload adds is built alike.
        self.builder = builder or Builder(server.config)
        self.loader = loader
        self.metrics_listen = metrics_listen
        self.admin = Admin()
        self.metrics = Metrics()
        self.status_providers: dict[str, status.Provider] = {}
        self._shutdown_hooks: list[ShutdownHook] = []
        # Run after a reload is applied, with (old, new) configuration: declared pairs.
        self._reload_hooks: list[Callable[[Config, Config], Awaitable[Any]]] = []
        self._after_reload: set[asyncio.Future[Any]] = set()
        self._last_reload: list[asyncio.Future[Any]] = []  # the hooks the last reload ran
        self._watchdog: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # LUs removed, closed when idle
        self.flush_failures = 0  # LUNs whose flush failed at shutdown (exit status 1)
        self.admin.register("status", lambda params: self.status())
        self.last_reload = LastReload()
        self.admin.register("reload", lambda params: self.reload_settled(reload_report.TARGETCTL))
        self.metrics.add_collector(self._core_families)
        logs.scrubber.set_secrets(logs.config_secrets(server.config))
        pacing.set_priority(server.config.pairs.backup_priority)  # type: ignore[arg-type]

    # -- hooks for other subsystems ------------------------------------------------------
    def provide_status(self, section: str, provider: status.Provider) -> None:
        self.status_providers[section] = provider

    def on_shutdown(self, hook: ShutdownHook) -> None:
        self._shutdown_hooks.append(hook)

    def on_reload(self, hook: Callable[[Config, Config], Awaitable[Any]]) -> None:
        """``hook(old, new)`` runs (as a task) after each reload that was applied."""
        self._reload_hooks.append(hook)

    # -- life cycle ----------------------------------------------------------------------
    async def start(self, socket_name: str = SOCKET_NAME, *, notify: bool = True) -> None:
        """After the portals listen: admin socket, metrics, then tell systemd we are ready
        (``notify``; a worker process leaves that to its portal)."""
        await self.admin.start(self.server.config.state_dir / socket_name)
        if self.metrics_listen is not None:
            await self.metrics.start(*self.metrics_listen)
            host, port = self.metrics.bound  # type: ignore[misc]
            log.info("metrics", extra=logs.fields(listen=f"{host}:{port}"))
        if not notify:
            return
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            self._watchdog = asyncio.ensure_future(self._ping(interval))
        sdnotify.notify("READY=1\nSTATUS=serving")

    async def _ping(self, interval: float) -> None:
        # Pings come from the event loop itself: a loop stuck for WatchdogSec gets restarted.
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def shutdown(self, grace: float, stopping: Stopping | None = None) -> None:
        """SIGTERM: drain, flush every LUN, run the shutdown hooks, close the endpoints.
        ``stopping`` follows the stages (targetd/stopping.py)."""
        stopping = Stopping() if stopping is None else stopping
        sdnotify.notify("STOPPING=1\nSTATUS=draining")
        drained = await self.server.stop(grace)
        log.info("drained", extra=logs.fields(abandoned_commands=drained))
        # A LUN that cannot be flushed is logged; the pairs' state is still written below.
        stopping.stage = "flushing"
        self.flush_failures = await flush_targets(self.server.scsi_targets(), stopping)
        stopping.stage = "shutdown hooks (pair state)"
        for hook in self._shutdown_hooks:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("shutdown hook failed", extra=logs.fields(hook=repr(hook)))
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.metrics.stop()
        await self.admin.stop()

    # -- admin methods ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        snapshot = status.snapshot(self.server, self.status_providers)
        snapshot["last_reload"] = self.last_reload.outcome
        return snapshot

    def sighup(self) -> None:
        """SIGHUP: :meth:`reload_settled` in the background. Its outcome goes where
        ``targetctl reload``'s does: the log, and ``targetctl status``."""
        task = asyncio.ensure_future(self.reload_settled(reload_report.SIGHUP))
        self._after_reload.add(task)
        task.add_done_callback(self._after_reload.discard)

    def reload(self) -> dict[str, list[str]]:
        """SIGHUP (or ``targetctl reload``): apply what is safe, say what is not."""
        self._last_reload = []  # a refused reload runs no hook
        if self.loader is None:
            return {"applied": [], "refused": ["no configuration file to reload"]}
        sdnotify.notify("RELOADING=1")
        try:
            new = self.loader()
        except (ConfigError, OSError, ValueError, TypeError) as err:
            log.error("reload refused", extra=logs.fields(error=str(err)))
            sdnotify.notify("READY=1")
            return {"applied": [], "refused": [f"bad configuration: {err}"]}
        result = reload.plan(self.server.config, new, self._paired)
        # Secrets are known to the scrubber before anything could log them.
        logs.scrubber.set_secrets(logs.config_secrets(result.config))
        running = self.builder.config
        try:
            self._build(result)
        except (ConfigError, OSError, ValueError) as err:
            self.builder.config = running
            log.error("reload failed", extra=logs.fields(error=str(err)))
            sdnotify.notify("READY=1")
            return {"applied": [], "refused": [f"cannot build new LUNs: {err}"]}
        self._grow(result)
        previous = self.server.config
        self.server.config = result.config
        # The copy threads persist: each copy job from now on runs at the new priority.
        pacing.set_priority(result.config.pairs.backup_priority)  # type: ignore[arg-type]
        self._last_reload = []
        for hook in self._reload_hooks:
            task = asyncio.ensure_future(hook(previous, result.config))
            self._after_reload.add(task)
            self._last_reload.append(task)
            task.add_done_callback(self._after_reload.discard)
        images = [
            (f"target {name}: lun {number}", lu, image)
            for name, runtime in self.server.targets.items()
            for number, lu in runtime.scsi.luns.items()
            if isinstance(lu, BlockDevice) and (image := rbd_image_of(lu)) is not None
        ]
        if images:
            follow = asyncio.ensure_future(self._follow_images(images))
            self._after_reload.add(follow)
            self._last_reload.append(follow)
            follow.add_done_callback(self._after_reload.discard)
        self._apply_alua(result.config)
        self._remove(result)
        self._enforce_acls(result)
        for change in result.applied:
            log.info("reload applied", extra=logs.fields(change=change))
        for change in result.refused:
            log.warning("reload not applied", extra=logs.fields(change=change))
        sdnotify.notify("READY=1")
        return {"applied": result.applied, "refused": result.refused}

    async def reload_settled(self, trigger: str | None = None) -> dict[str, list[str]]:
        """:meth:`reload`, answered once the reload hooks have run, with what they applied
        and refused too (the declared pairs and groups). With a ``trigger`` (SIGHUP,
        ``targetctl reload``) the outcome is logged and kept for ``targetctl status``; a
        worker's reload has none (its portal keeps the whole outcome)."""
        result = self.reload()
        hooks = self._last_reload
        self._last_reload = []
        for outcome in await asyncio.gather(*hooks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                result["refused"].append(f"after the reload: {type(outcome).__name__}: {outcome}")
            elif isinstance(outcome, dict):
                result["applied"].extend(outcome.get("applied", ()))
                result["refused"].extend(outcome.get("refused", ()))
        if trigger is not None:
            self.last_reload.record(trigger, result)
        return result

    def _build(self, plan: ReloadPlan) -> None:
        config = plan.config
        self.builder.config = config
        for name, _ in plan.new_luns:
            # A LUN added to a running target gets that target's copy services, so its one
            # copy manager serves it too.
            running = next(iter(self.server.targets[name].scsi.luns.values()), None)
            if running is not None:
                self.builder.copies.setdefault(name, running.services)
        built = [(t.name, self.builder.target(t)) for t in plan.new_targets]
        extra = [(name, lun, self.builder.lun(config.target(name), lun))  # type: ignore[arg-type]
                 for name, lun in plan.new_luns]  # fmt: skip
        for name, scsi in built:
            self.server.targets[name] = TargetRuntime(name, scsi)
        for name, lun, lu in extra:
            runtime = self.server.targets[name]
            runtime.add_lun(lun.lun, lu)
            for other in runtime.scsi.luns.values():
                other.raise_unit_attention(Reason.REPORTED_LUNS_DATA_CHANGED)

    def _grow(self, plan: ReloadPlan) -> None:
        """Grow the LUs whose ``size`` grew (each nexus is told: CAPACITY DATA HAS
        CHANGED). One that cannot grow keeps its running size, in the configuration too,
        so the next reload tries again."""
        for name, lun in plan.grown:
            runtime = self.server.targets.get(name)
            lu = None if runtime is None else runtime.scsi.luns.get(lun.lun)
            if lu is None:  # a worker that does not serve this target
                continue
            where = f"target {name}: lun {lun.lun}"
            try:
                lu.grow(lun.size)  # type: ignore[attr-defined]
            except (OSError, ValueError) as err:
                plan.applied = [a for a in plan.applied if not a.startswith(f"{where} grown ")]
                plan.refused.append(f"{where}: not grown: {err}")
                running = self.server.config.target(name)
                old = None if running is None else next(
                    (n for n in running.luns if n.lun == lun.lun), None
                )  # fmt: skip
                if old is not None:
                    plan.config = _with_lun(plan.config, name, old)
                    self.builder.config = plan.config

    async def _follow_images(
        self, images: list[tuple[str, BlockDevice, RbdImage]]
    ) -> dict[str, list[str]]:
        """RBD LUNs whose image grew (``rbd resize``) and that librbd's header watch did not
        grow already (targetd.luns): each grows to the image's size, its nexuses told as for
        a file LUN (docs/rbd.md, "Growing an RBD LUN"). An image shrunk is reported. The
        daemon never resizes an image itself."""
        applied: list[str] = []
        refused: list[str] = []
        for where, lu, image in images:
            try:
                size = await image.read_size()
            except OSError as err:
                refused.append(f"{where}: the size of its image not read: {err}")
                continue
            size -= size % lu.block_size
            before = lu.num_blocks * lu.block_size
            if size < before:
                refused.append(
                    f"{where}: its image shrank to {size} bytes: still {before} bytes"
                    " (the hosts' data past the image's end is gone)"
                )
            elif size > before:
                try:
                    lu.grow(size)
                except ValueError as err:
                    refused.append(f"{where}: its image grew to {size} bytes: not grown: {err};"
                                   f" still {before} bytes")  # fmt: skip
                else:
                    applied.append(f"{where} grown from {before} to {size} bytes (its image grew)")
        for change in applied:
            log.info("reload applied", extra=logs.fields(change=change))
        for change in refused:
            log.warning("reload not applied", extra=logs.fields(change=change))
        return {"applied": applied, "refused": refused}

    def _apply_alua(self, config: Config) -> None:
        """New port group states: every nexus of every LU learns of the change (SPC-4
        5.15.2.5: ASYMMETRIC ACCESS STATE CHANGED), so multipath asks RTPG again."""
        if self.builder.port_groups.update(alua_groups(config)):
            for runtime in self.server.targets.values():
                for lu in runtime.scsi.luns.values():
                    lu.raise_unit_attention(Reason.ASYMMETRIC_ACCESS_STATE_CHANGED)

    def _paired(self, target: str, lun: int) -> str | None:
        runtime = self.server.targets.get(target)
        lu = None if runtime is None else runtime.scsi.luns.get(lun)
        return None if lu is None else paired_volume(lu)

    def _remove(self, plan: ReloadPlan) -> None:
        """Targets and LUNs the new configuration no longer has. A removed target's
        sessions lose their access at once (see IscsiConnection.revoke); a removed LUN
        answers LOGICAL UNIT NOT SUPPORTED and its target's sessions are asked to log out
        (they see the new LUN list when they log in again). Each LU is closed once the
        commands that were running on it have ended."""
        server = self.server
        for name in plan.removed_targets:
            runtime = server.targets.pop(name)
            for c in list(runtime.connections):
                c.revoke(f"target {name} removed by a reload")
                _abort_copies(runtime, c)
            for number, lu in runtime.scsi.luns.items():
                self.builder.forget_lun(name, number, lu)
            self.builder.controls.pop(name, None)
            self.builder.copies.pop(name, None)
            self._close_later(runtime, list(runtime.scsi.luns.values()))
        for name, number in plan.removed_luns:
            runtime = server.targets[name]
            lu = runtime.remove_lun(number)
            self.builder.forget_lun(name, number, lu)
            for other in runtime.scsi.luns.values():
                other.raise_unit_attention(Reason.REPORTED_LUNS_DATA_CHANGED)
            for c in list(runtime.connections):
                c.ask_to_log_out()
            self._close_later(runtime, [lu])

    def _enforce_acls(self, plan: ReloadPlan) -> None:
        """An initiator taken off a target's ACL loses its live sessions too."""
        for name in plan.acl_changed:
            target = plan.config.target(name)
            runtime = self.server.targets.get(name)
            if target is None or runtime is None or not target.allowed_initiators:
                continue
            for c in list(runtime.connections):
                session = c.conn.session
                if session is not None and session.initiator_name not in target.allowed_initiators:
                    c.revoke(f"initiator removed from the ACL of {name} by a reload")
                    _abort_copies(runtime, c)

    def _close_later(self, runtime: TargetRuntime, lus: list[LogicalUnit]) -> None:
        running = [h for c in runtime.connections for h in c._running.values()]

        async def close() -> None:
            if running:
                await asyncio.wait(running, timeout=CLOSE_WAIT)
            # Copies running in the background (IMMED) that read or write these LUs stop
            # first: a copy must not outlive the files it copies between.
            for manager in _copy_managers([*lus, *runtime.scsi.luns.values()]):
                await manager.stop_touching(lus)
            for lu in lus:
                gate = getattr(lu.access_gate, "stop", None)
                if gate is not None:  # a gateway's LU: give its lock up, stop watching
                    await gate()
                closer = getattr(lu, "close", None)
                if closer is not None:
                    closer()

        task = asyncio.ensure_future(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- metrics -----------------------------------------------------------------------------
    def _core_families(self) -> list[Family]:
        server = self.server
        triples = [(name, lun, stats) for name, rt in server.targets.items()
                   for lun, stats in sorted(rt.stats.items())]  # fmt: skip
        families = lun_families(triples)
        sessions = Family("targetd_sessions", "gauge", "iSCSI sessions logged in")
        by_type: dict[str, int] = {"normal": 0, "discovery": 0}
        for s in server.sessions:
            by_type[s.session_type.lower()] = by_type.get(s.session_type.lower(), 0) + 1
        for kind, count in by_type.items():
            sessions.add(count, {"type": kind})
        conns = Family("targetd_connections", "gauge", "TCP connections open on the portals")
        conns.add(len(server.connections))
        inflight = Family("targetd_commands_in_flight", "gauge", "SCSI commands not yet answered")
        inflight.add(sum(len(c.conn.tasks) for c in server.connections))
        store = Family(
            "targetd_lun_store_errors_total",
            "counter",
            "Backing store failures answered to hosts (space_exhausted, read_error, write_error)",
        )
        for name, rt in server.targets.items():
            for lun, lu in sorted(rt.scsi.luns.items()):
                for kind, count in lu.store_errors.counts.items():
                    store.add(count, {"target": name, "lun": str(lun), "kind": kind})
        return [*families, sessions, conns, inflight, store]


def _copy_managers(lus: Iterable[LogicalUnit]) -> list[CopyManager]:
    """The copy managers of these LUs (one per target)."""
    found: dict[int, CopyManager] = {}
    for lu in lus:
        manager = lu.services.copy_manager
        if isinstance(manager, CopyManager):
            found[id(manager)] = manager
    return list(found.values())


def _abort_copies(runtime: TargetRuntime, connection: IscsiConnection) -> None:
    """A session lost its access: the copies it started stop too."""
    nexus = connection.conn.nexus
    if nexus is not None:
        for manager in _copy_managers(runtime.scsi.luns.values()):
            manager.abort_from(nexus.initiator_port)


def _with_lun(config: Config, target: str, lun: LunConfig) -> Config:
    """``config`` with ``target``'s LUN of that number replaced by ``lun``."""
    targets = tuple(
        t if t.name != target
        else replace(t, luns=tuple(lun if n.lun == lun.lun else n for n in t.luns))
        for t in config.targets
    )  # fmt: skip
    return replace(config, targets=targets)
