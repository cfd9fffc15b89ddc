"""``targetd serve``: load the configuration, build the LUNs, listen, run until signalled."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from targetd.config import Config, ConfigError, Portal, default_config, parse_hostport
from targetd.luns import build_targets, close_targets
from targetd.server import TargetServer

log = logging.getLogger("targetd")

EXIT_CONFIG = 2


def _load(args: argparse.Namespace) -> Config:
    state_dir = Path(args.state_dir) if args.state_dir else None
    if args.config:
        from targetd.config import load_config

        config = load_config(Path(args.config), state_dir=state_dir)
    else:
        config = default_config(state_dir or Path("var/targetd"))
    if args.listen is not None:
        if ":" not in args.listen:
            raise ConfigError("--listen", f"expected HOST:PORT, got {args.listen!r}")
        host, port = parse_hostport(args.listen, "--listen")
        first = config.portals[0] if config.portals else Portal()
        config = replace(config, portals=(replace(first, listen_host=host, listen_port=port),))
    return config


async def serve(config: Config) -> int:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    targets = build_targets(config)
    server = TargetServer(config, targets)
    try:
        await server.start()
    except OSError as err:
        log.error("cannot listen: %s", err)
        close_targets(targets)
        return 1
    for target in config.targets:
        for host, port in server.bound:
            log.info("serving %s on %s:%d", target.name, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await server.stop()
    close_targets(targets)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="targetd", description="iSCSI target daemon")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve the configured targets")
    p_serve.add_argument("--config", help="TOML configuration file (default: built-in)")
    p_serve.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:3260)")
    p_serve.add_argument("--state-dir", help="directory for LUN files and state")
    p_serve.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = _load(args)
    except ConfigError as err:
        print(f"targetd: bad configuration: {err}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        runner = asyncio.run
    return runner(serve(config))
