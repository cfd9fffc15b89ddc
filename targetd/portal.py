"""``targetd serve`` with worker processes: the portal process (docs/workers.md).

The portal listens on the configured portals with the ordinary connection shell, whose
login machine redirects each normal-session login to the worker serving its target;
discovery sessions are served here. It builds no LUN. Its admin socket is the one
``targetctl`` finds: ``status`` gathers from every worker, ``reload`` re-reads the file and
fans out to them, a method naming a target goes to that target's worker. Its metrics
endpoint serves every worker's families, each sample labelled ``worker``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from targetd import logs, reload, reload_report, sdnotify, stack_dump, status
from targetd.admin import SOCKET_NAME, Admin, AdminError, Report
from targetd.config import Config, ConfigError
from targetd.metrics import Family, Metrics
from targetd.reload_report import LastReload
from targetd.server import TargetServer
from targetd.workers import (
    CONFIG_KEPT,
    CONFIG_LOADED,
    CONFIG_STARTED,
    Supervisor,
    merge_families,
    merge_status,
    target_tables,
    worker_families,
    write_snapshot,
)

log = logging.getLogger("targetd")
FORWARD_TIMEOUT = 3600.0  # a forwarded method may copy a cartridge
QUERY_SUFFIXES = (".list", ".status")  # methods that only read


class Portal:
    def __init__(
        self, config: Config, argv: list[str], loader: Callable[[], Config] | None
    ) -> None:
        self.server = TargetServer(config, {})
        self.loader = loader
        self.supervisor = Supervisor(argv, config, on_change=self._route)
        self.admin = Admin()
        self.admin.register("status", lambda params: self.status())
        self.last_reload = LastReload()
        self.admin.register("reload", lambda params: self.reload(reload_report.TARGETCTL))
        self.admin.fallback = self.forward
        self.metrics = Metrics()
        self.metrics.gather = self._gather_metrics
        self.metrics.add_collector(lambda: worker_families(self.supervisor.workers))
        self._reloading = asyncio.Lock()
        logs.scrubber.set_secrets(logs.config_secrets(config))
        # The [[target]] tables of the targets in force, from the texts that gave them: a
        # target a reload leaves out but a worker keeps (paired) keeps its table here, for
        # a worker started again to serve it too (CONFIG_KEPT).
        self.tables: dict[str, dict[str, Any]] = {}
        started = config.state_dir / CONFIG_STARTED
        if loader is not None and started.exists():
            self.tables = target_tables(started.read_bytes())

    def _route(self) -> None:
        self.server.moved = self.supervisor.routes(self.server.config.portals)

    async def start(self) -> None:
        await self.supervisor.start()
        self._route()
        await self.server.start()
        config = self.server.config
        await self.admin.start(config.state_dir / SOCKET_NAME)
        if config.metrics_listen is not None:
            await self.metrics.start(*config.metrics_listen)
            host, port = self.metrics.bound  # type: ignore[misc]
            log.info("metrics", extra=logs.fields(listen=f"{host}:{port}"))

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
        await self.supervisor.stop()
        await self.metrics.stop()
        await self.admin.stop()

    # -- admin ----------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        snapshot = status.snapshot(self.server, {})
        workers = self.supervisor.workers
        answers = await asyncio.gather(
            *(self.supervisor.call(w, "status", {}) for w in workers), return_exceptions=True
        )
        merge_status(snapshot, workers, answers)
        snapshot["last_reload"] = self.last_reload.outcome
        return snapshot

    async def reload(self, trigger: str) -> dict[str, list[str]]:
        """Re-read the file; the workers apply their share (one reload at a time). The
        outcome is logged and kept for ``targetctl status``, whatever the ``trigger``."""
        if self.loader is None:
            result = {"applied": [], "refused": ["no configuration file to reload"]}
        else:
            async with self._reloading:
                sdnotify.notify("RELOADING=1")
                try:
                    result = await self._reload(self.loader)
                finally:
                    sdnotify.notify("READY=1")
        self.last_reload.record(trigger, result)
        return result

    async def _reload(self, loader: Callable[[], Config]) -> dict[str, list[str]]:
        try:
            new = loader()
        except (ConfigError, OSError, ValueError, TypeError) as err:
            log.error("reload refused", extra=logs.fields(error=str(err)))
            return {"applied": [], "refused": [f"bad configuration: {err}"]}
        old = self.server.config
        plan = reload.plan(old, new)  # what only a restart changes stays as it runs
        logs.scrubber.set_secrets(logs.config_secrets(plan.config))
        result = await self.supervisor.assign(plan.config)
        served = set(result["targets"])
        targets = [t for t in plan.config.targets if t.name in served]
        targets += [t for t in old.targets if t.name in served and plan.config.target(t.name)
                    is None]  # fmt: skip
        self.server.config = replace(plan.config, targets=tuple(targets))
        self.supervisor.config = self.server.config
        self._keep_tables(old.state_dir, served)
        self._route()
        refused = [*plan.refused, *(r for r in result["refused"] if r not in plan.refused)]
        for change in result["applied"]:
            log.info("reload applied", extra=logs.fields(change=change))
        for change in refused:
            log.warning("reload not applied", extra=logs.fields(change=change))
        return {"applied": result["applied"], "refused": refused}

    def _keep_tables(self, state_dir: Path, served: set[str]) -> None:
        """Note the tables of the targets served after a reload, and write those the text
        just loaded lacks (kept by their workers) where a worker started later finds them."""
        try:
            loaded = target_tables((state_dir / CONFIG_LOADED).read_bytes())
        except (OSError, ValueError) as err:
            log.warning("kept targets not noted", extra=logs.fields(error=str(err)))
            return
        kept: dict[str, dict[str, Any]] = {}
        for name in served:
            table, before = loaded.get(name), self.tables.get(name)
            if table is None:
                if before is not None:  # the whole target kept
                    kept[name] = before
                continue
            listed = table.get("lun", [])
            numbers = {lun.get("lun") for lun in listed if isinstance(lun, dict)}
            serving = set(self.supervisor.luns.get(name, ()))
            extra = [lun for lun in (before or {}).get("lun", [])
                     if isinstance(lun, dict) and lun.get("lun") in serving - numbers]  # fmt: skip
            if extra:  # LUNs of it kept
                kept[name] = {**table, "lun": [*listed, *extra]}
        self.tables = {**loaded, **kept}
        try:
            write_snapshot(state_dir / CONFIG_KEPT, json.dumps(kept, default=str).encode())
        except OSError as err:
            log.warning("kept targets not noted", extra=logs.fields(error=str(err)))

    async def forward(
        self, method: str, params: dict[str, Any], progress: Report | None = None
    ) -> Any:
        """A method the portal does not serve itself goes to the worker of the target it
        names. Naming none: with one target, to its worker; else a query (``*.list``,
        ``*.status``) goes to every worker (lists joined, or the one worker that knows the
        name), and anything else must name its target, since each worker would take its own
        target for the default and act. A request that asked for progress lines gets the
        worker's, each passed on as it comes."""
        supervisor = self.supervisor
        target = params.get("target")
        targets = self.server.config.targets
        if target is None and len(targets) == 1:
            target = targets[0].name
        if isinstance(target, str):
            worker = supervisor.owner(target)
            if worker is None:
                raise AdminError(f"no target named {target!r}", "unknown-target")
            return await supervisor.call(
                worker, method, params, timeout=FORWARD_TIMEOUT, progress=progress
            )
        if not method.endswith(QUERY_SUFFIXES):
            raise AdminError(
                "several targets, served by worker processes: name one with --target",
                "bad_request",
            )
        answers = await asyncio.gather(
            *(supervisor.call(w, method, params, timeout=FORWARD_TIMEOUT)
              for w in supervisor.workers),
            return_exceptions=True,
        )  # fmt: skip
        found = [a for a in answers if not isinstance(a, BaseException)]
        failed = [a for a in answers if isinstance(a, BaseException)]
        if found and all(isinstance(a, list) for a in found):
            if failed:  # a list missing one worker's items would mislead
                raise failed[0]
            return [item for answer in found for item in answer]
        if len(found) == 1:
            return found[0]
        if not found:
            raise failed[0]
        raise AdminError("found in several targets: name one with --target", "bad_request")

    async def _gather_metrics(self, own: list[Family]) -> list[Family]:
        workers = self.supervisor.workers
        answers = await asyncio.gather(
            *(self.supervisor.call(w, "metrics.families", {}) for w in workers),
            return_exceptions=True,
        )
        return merge_families(own, workers, answers)


async def serve_portal(
    config: Config, argv: list[str], loader: Callable[[], Config] | None, drain: float
) -> int:
    portal = Portal(config, argv, loader)
    try:
        await portal.start()
    except (OSError, RuntimeError) as err:
        log.error("cannot serve: %s", err, extra=logs.fields(error=str(err)))
        await portal.stop(0)
        return 1
    for target in config.targets:
        worker = portal.supervisor.owner(target.name)
        for host, port in portal.server.bound:
            log.info(
                "serving",
                extra=logs.fields(
                    target=target.name, portal=f"{host}:{port}",
                    worker=None if worker is None else worker.index,
                ),
            )  # fmt: skip
    sdnotify.notify("READY=1\nSTATUS=serving")
    watchdog = None
    interval = sdnotify.watchdog_interval()
    if interval is not None:
        watchdog = asyncio.ensure_future(_ping(interval))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stack_dump.install(sys.stderr, loop)
    reloads: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        task = asyncio.ensure_future(portal.reload(reload_report.SIGHUP))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    log.info("stopping")
    sdnotify.notify("STOPPING=1\nSTATUS=draining")
    if watchdog is not None:
        watchdog.cancel()
    await portal.stop(drain)
    log.info("stopped")
    return 0


async def _ping(interval: float) -> None:
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
