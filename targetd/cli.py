"""``targetd serve``: load the configuration, build the LUNs, listen, run until signalled."""

from __future__ import annotations

import argparse
import asyncio
import errno
import faulthandler
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backing import rbd_previous
from backing.pairs import PairManager, PairService
from targetd import chap_env, gc_tuning, logs, pair_config, reload, stack_dump, state_lock
from targetd.config import (
    DEFAULT_STATE_DIR,
    ChapSecret,
    Config,
    ConfigError,
    Portal,
    check_images,
    default_config,
    parse_config_text,
    parse_hostport,
    read_config,
    resolve_workers,
)
from targetd.copy_ops import CopyOperations
from targetd.group_admin import GroupAdmin
from targetd.library_admin import LibraryAdmin
from targetd.luns import Builder, close_targets, stop_gates
from targetd.operations import Operations
from targetd.pair_admin import PairAdmin
from targetd.pairs import pair_settings
from targetd.server import TargetServer
from targetd.stopping import STOP_SECONDS, Stopping
from targetd.stopping import close_targets as close_luns
from targetd.workers import (
    CONFIG_LOADED,
    CONFIG_STARTED,
    families_to_json,
    read_kept,
    socket_name,
    worker_config,
    write_snapshot,
)

log = logging.getLogger("targetd")

EXIT_CONFIG = 2
# SIGTERM: how long commands in flight may take to finish (systemd's TimeoutStopSec is longer).
DRAIN_SECONDS = 10.0


def _load(
    args: argparse.Namespace,
    text: bytes | None = None,
    env: Mapping[str, str] = os.environ,
    kept: Iterable[dict[str, Any]] = (),
) -> Config:
    """The configuration: ``--config``'s file, or ``text`` as that file's content, with
    the CHAP credentials ``env`` gives (targetd.chap_env) and the ``kept`` target tables
    (CONFIG_KEPT) in place of its own of those names."""
    state_dir = Path(args.state_dir) if args.state_dir else None
    if args.config:
        path = Path(args.config)
        data = read_config(path) if text is None else text
        config = parse_config_text(data, path, state_dir=state_dir, extra_targets=kept)
    else:
        config = default_config(state_dir or DEFAULT_STATE_DIR)
    if args.listen is not None:
        if ":" not in args.listen:
            raise ConfigError("--listen", f"expected HOST:PORT, got {args.listen!r}")
        host, port = parse_hostport(args.listen, "--listen")
        first = config.portals[0] if config.portals else Portal()
        config = replace(config, portals=(replace(first, listen_host=host, listen_port=port),))
    check_images(config)
    config = chap_env.apply(config, env, require=getattr(args, "require_chap", False))
    if getattr(args, "workers", None):
        workers = resolve_workers(args.workers, len(config.targets), "--workers")
        if workers > 1 and config.gateway is not None:
            raise ConfigError("--workers", "worker processes and [gateway] cannot be combined")
        config = replace(config, workers=workers)
    if getattr(args, "metrics", None):
        if ":" not in args.metrics:
            raise ConfigError("--metrics", f"expected HOST:PORT, got {args.metrics!r}")
        config = replace(config, metrics_listen=parse_hostport(args.metrics, "--metrics"))
    return config


def _load_as_portal_did(
    args: argparse.Namespace, texts: Path | None, role: WorkerRole, *, starting: bool
) -> Config:
    """A worker's configuration: the text its portal started with, and the one it loaded
    last applied to it as a reload (the file itself may hold an edit not reloaded), with
    the CHAP credentials the portal's last load found (``role.env``). ``starting``: also
    the targets and LUNs of this worker that a reload left out but its predecessor kept
    serving (in a pair), as it did; at a reload the running worker decides that."""
    env = role.env
    if not args.config or texts is None:
        return _load(args, env=env)
    started = _load(args, read_config(texts / CONFIG_STARTED), env)
    text = read_config(texts / CONFIG_LOADED)
    kept: list[dict[str, Any]] = []
    if starting:
        kept = [t for n, t in read_kept(texts).items() if n in role.targets]
    return reload.plan(started, _load(args, text, env, kept)).config


@dataclass
class WorkerRole:
    """This process is worker ``index`` of a portal (targetd.workers), serving ``targets``."""

    index: int
    targets: list[str]
    # The environment its configuration loads with: the CHAP credentials in it are the
    # portal's (targetd.chap_env.worker_env), updated by each ``worker.reload``.
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


async def serve(
    config: Config,
    *,
    loader: Callable[[], Config] | None = None,
    argv: list[str] | None = None,
    worker: WorkerRole | None = None,
) -> int:
    """Serve until signalled; the exit status. The state directory is this daemon's alone
    (a worker shares its portal's, which holds the lock)."""
    try:
        if worker is None:
            lock: state_lock.StateLock | None = state_lock.hold(config.state_dir)
        else:
            state_lock.prepare(config.state_dir)
            lock = None
    except state_lock.StateDirError as err:
        print(f"targetd: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if lock is not None and config.workers <= 1:
        # One process holding the flock: the previous run's clients are dead (their
        # watches are fenced as the images open), this run's are recorded.
        rbd_previous.take_over(config.state_dir)
    try:
        return await _serve(config, loader=loader, argv=argv, worker=worker)
    finally:
        rbd_previous.stop_recording()
        if lock is not None:
            lock.release()


async def _serve(
    config: Config,
    *,
    loader: Callable[[], Config] | None,
    argv: list[str] | None,
    worker: WorkerRole | None,
) -> int:
    if worker is None and config.workers > 1:
        from targetd.portal import serve_portal

        return await serve_portal(config, argv or [], loader, DRAIN_SECONDS)
    scopes = None
    if worker is not None:  # its own targets' pairs only (and the unscoped ones: worker 0)
        scopes = frozenset([*worker.targets, *([""] if worker.index == 0 else [])])
    pairs = PairService(PairManager(config.state_dir, pair_settings(config), scopes=scopes))
    builder = Builder(config, pairs)
    try:
        targets = builder.targets()
    except (ConfigError, OSError) as err:  # a LUN's store cannot be opened (an unreachable
        # cluster, a file where its directory should be): a message, not a traceback
        print(f"targetd: cannot open a LUN: {err}", file=sys.stderr)
        return EXIT_CONFIG
    # Pairs resume before the first login, so no host write escapes their bitmaps; then
    # the pairs and groups the configuration declares are made if absent.
    await pairs.start()
    await pair_config.apply(pairs, config)
    server = TargetServer(config, targets)
    ops = Operations(server, builder=builder, loader=loader, metrics_listen=config.metrics_listen)
    ops.on_shutdown(pairs.stop)  # after the drain: the last cleared bits are written

    async def after_reload(old: Config, new: Config) -> dict[str, list[str]]:
        pairs.apply_settings(pair_settings(new))  # [pairs]: what reload.plan applied
        await pairs.start()  # pair files of LUNs the reload added resume now
        return await pair_config.apply(pairs, new, old)

    ops.on_reload(after_reload)
    ops.provide_status("pairs", lambda: [s.as_dict() for s in pairs.list_pairs()])
    pair_admin = PairAdmin(
        pairs, lambda: server.config, builder.controls, lambda t: server.targets[t].scsi.luns
    )
    pair_admin.register(ops.admin)  # targetctl pair ...
    GroupAdmin(pair_admin).register(ops.admin)  # targetctl group ...
    LibraryAdmin(  # targetctl library ...
        lambda: {name: runtime.scsi.luns for name, runtime in server.targets.items()}
    ).register(ops.admin)
    ops.metrics.add_collector(pair_admin.metric_families)
    if config.gateway is not None:  # two gateways: who holds each LU's lock
        from targetd.gateway import metric_families

        ops.provide_status("gateway", lambda: [gate.status() for gate in builder.gates])
        ops.metrics.add_collector(lambda: metric_families(builder.gates))
    copies = CopyOperations(server)  # EXTENDED COPY: `targetctl status` and metrics
    ops.provide_status("copy_operations", copies.status)
    ops.metrics.add_collector(copies.metric_families)
    if worker is not None:
        _worker_methods(ops, worker)
    try:
        await server.start()
        if worker is None:
            await ops.start()
        else:
            await ops.start(socket_name(worker.index), notify=False)
    except OSError as err:
        log.error("cannot listen: %s", err, extra=logs.fields(error=str(err)))
        # The log line is for the journal; a person at a terminal gets one line that says
        # what to do (the log may be going to a file or JSON).
        print(f"targetd: cannot listen: {_why(err)}{_listen_hint(err)}", file=sys.stderr)
        await ops.shutdown(0)
        await stop_gates(server.scsi_targets())
        close_targets(server.scsi_targets())
        return 1
    for target in config.targets:
        for host, port in server.bound:
            log.info("serving", extra=logs.fields(target=target.name, portal=f"{host}:{port}"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stack_dump.install(sys.stderr, loop)
    if worker is None:
        loop.add_signal_handler(signal.SIGHUP, ops.sighup)
    else:
        await _tell_portal(server, stop)
    gc_tuning.tune()  # after start-up: what it built is frozen out of every pass
    await stop.wait()
    log.info("stopping")
    # Bounded, whatever a cluster does (targetd/stopping.py): past STOP_SECONDS what is
    # still running is logged and abandoned.
    stopping = Stopping()
    if not await stopping.run(_stop(ops, server, stopping), STOP_SECONDS):
        stopping.abandon(STOP_SECONDS, 1)
    status = 1 if ops.flush_failures else 0
    stopping.exit_if_left(status)  # an LU left to its cluster: librbd may still run
    log.info("stopped")
    return status


async def _stop(ops: Operations, server: TargetServer, stopping: Stopping) -> None:
    await ops.shutdown(DRAIN_SECONDS, stopping)
    stopping.stage = "stopping the gateways' lock work"
    # Their librbd calls end before the images close.
    await stop_gates(server.scsi_targets(), stopping)
    stopping.stage = "closing LUNs"
    await close_luns(server.scsi_targets(), stopping)


def _why(err: OSError) -> str:
    return err.strerror or str(err)


def _listen_hint(err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return " (another target, targetd or tgtd, on that port? --listen HOST:PORT picks another)"
    if err.errno == errno.EADDRNOTAVAIL:
        return " (no interface of this host has that address)"
    return ""


def _worker_methods(ops: Operations, worker: WorkerRole) -> None:
    """What a portal asks of its worker: reload with these targets, and the metrics."""

    async def reload_with(params: dict[str, Any]) -> dict[str, Any]:
        worker.targets[:] = [str(t) for t in params.get("targets", worker.targets)]
        if "chap" in params:  # what the portal's reload read, for every worker alike
            chap = params["chap"]
            given = None if chap is None else ChapSecret(str(chap[0]), str(chap[1]))
            worker.env = chap_env.worker_env(worker.env, given)
        # Settled: the declared pairs' outcome reaches the portal's answer and status too.
        result: dict[str, Any] = dict(await ops.reload_settled())
        result["targets"] = sorted(ops.server.targets)
        # Per target, the LUNs it serves now (a paired one a reload left out among them).
        result["luns"] = {n: sorted(t.scsi.luns) for n, t in ops.server.targets.items()}
        return result

    ops.admin.register("worker.reload", reload_with)
    ops.admin.register("metrics.families", lambda params: families_to_json(ops.metrics.families()))


async def _tell_portal(server: TargetServer, stop: asyncio.Event) -> None:
    """One line on stdout says we serve and on which ports; stdin closing means the portal
    is gone (even killed), and we stop."""
    sys.stdout.write(json.dumps({"pid": os.getpid(), "ports": server.portal_ports}) + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch() -> None:
        while await reader.read(4096):
            pass
        stop.set()

    task = asyncio.ensure_future(watch())
    _keep.add(task)


_keep: set[asyncio.Task[None]] = set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="targetd", description="iSCSI target daemon")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve the configured targets")
    p_serve.add_argument("--config", help="TOML configuration file (default: built-in)")
    p_serve.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:3260)")
    p_serve.add_argument("--state-dir", help="directory for LUN files and state")
    p_serve.add_argument(
        "--require-chap",
        action="store_true",
        help="refuse to serve a target without CHAP (credentials may come from "
        f"{chap_env.USER}/{chap_env.SECRET} or {chap_env.FILE}; opt out: "
        f"{chap_env.OPT_OUT}=1)",
    )
    p_serve.add_argument("--log-level", default="INFO")
    p_serve.add_argument(
        "--log-format", choices=sorted(logs.FORMATS), default="kv", help="one event per line"
    )
    p_serve.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here (default: off)"
    )
    p_serve.add_argument(
        "--workers",
        metavar="N|auto",
        help="worker processes, one or more targets each (default: [server] workers, 1)",
    )
    p_serve.add_argument("--worker", help=argparse.SUPPRESS)  # set by the portal
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logs.setup(args.log_level, args.log_format, sys.stderr)
    # A crash in a C library (librbd, librados) kills the process with no log line: its
    # sockets close and the initiators see only that. The stacks go to the log instead.
    faulthandler.enable(sys.stderr)
    role = None
    texts: Path | None = None  # a worker's: where its portal keeps what it loaded
    if args.worker:
        spec = json.loads(args.worker)
        role = WorkerRole(int(spec["index"]), [str(t) for t in spec["targets"]])
        texts = Path(spec["texts"])
        logs.PROCESS_FIELDS["worker"] = role.index
        # The portal passes its own arguments on: a worker's are the same plus --worker.
        argv = argv[: argv.index("--worker")]

    # A portal (workers > 1 at its start) keeps what it loaded where its workers read it.
    portal_state: list[Path] = []
    loads: list[int] = []  # a worker's loads so far (its first is its start)

    def load() -> Config:
        if role is not None:
            starting = not loads
            loads.append(1)
            config = _load_as_portal_did(args, texts, role, starting=starting)
            return worker_config(config, role.targets)
        text = read_config(Path(args.config)) if args.config else None
        config = _load(args, text)
        first = not portal_state and config.workers > 1
        if first:
            portal_state.append(config.state_dir)  # a reload keeps the state dir
        if portal_state and text is not None:
            names = (CONFIG_STARTED, CONFIG_LOADED) if first else (CONFIG_LOADED,)
            try:
                for name in names:
                    write_snapshot(portal_state[0] / name, text)
            except OSError as err:
                why = f"cannot keep the loaded configuration: {err}"
                raise ConfigError("state_dir", why) from err
        return config

    try:
        config = load()
    except ConfigError as err:
        print(f"targetd: bad configuration: {err}", file=sys.stderr)
        return EXIT_CONFIG
    run = serve(config, loader=load, argv=argv, worker=role)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.run(run)
    return uvloop.run(run)
