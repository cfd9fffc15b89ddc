"""``targetctl status`` and ``targetctl reload``: ask the running daemon over its admin socket."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from targetd import status
from targetd.admin import SOCKET_NAME, AdminError, Report, request

# Where the daemon keeps its state when systemd runs it (StateDirectory=targetd), and when
# `targetd serve` runs from a checkout with no --state-dir.
SYSTEM_STATE_DIR = Path("/var/lib/targetd")
LOCAL_STATE_DIR = Path("var/targetd")


def socket_path(args: argparse.Namespace) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    if getattr(args, "state_dir", None):
        return Path(args.state_dir) / SOCKET_NAME
    if env := os.environ.get("TARGETD_STATE_DIR"):
        return Path(env) / SOCKET_NAME
    local = LOCAL_STATE_DIR / SOCKET_NAME
    return local if local.exists() else SYSTEM_STATE_DIR / SOCKET_NAME


def add_socket_options(parser: argparse.ArgumentParser) -> None:
    """--state-dir/--socket: every targetctl subcommand that talks to the daemon takes them."""
    parser.add_argument("--state-dir", help="the daemon's state directory (holds admin.sock)")
    parser.add_argument("--socket", help="the admin socket itself")


def call(
    args: argparse.Namespace,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    progress: Report | None = None,
) -> Any:
    """One admin request; prints why and exits 1 when the daemon cannot answer.
    ``progress(done, total)`` is given the method's progress reports (long work)."""
    path = socket_path(args)
    try:
        return request(path, method, params, progress=progress)
    except (FileNotFoundError, ConnectionRefusedError):
        sys.exit(f"targetctl: no daemon listening on {path} (is targetd running? --state-dir?)")
    except PermissionError:
        sys.exit(f"targetctl: {path}: permission denied (the socket is for the daemon's user)")
    except AdminError as err:
        sys.exit(f"targetctl: {method}: {err}")


def _status(args: argparse.Namespace) -> int:
    result = call(args, "status")
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(status.render(result))
    return 0


# The daemon's words for a reload that read no configuration at all (operations.py).
_WHOLE_REFUSALS = ("bad configuration: ", "no configuration file")


def _reload(args: argparse.Namespace) -> int:
    """Exit 1 when the file was refused whole (it does not parse or cannot be read), so a
    script's `targetctl reload && ...` stops there; a change refused on its own (a LUN
    that needs a restart) is reported and the rest applied, exit 0."""
    result = call(args, "reload")
    refused_whole = any(r.startswith(_WHOLE_REFUSALS) for r in result["refused"])
    status = 1 if refused_whole else 0
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return status
    for change in result["applied"]:
        print(f"applied: {change}")
    for change in result["refused"]:
        print(f"not applied: {change}")
    if not result["applied"] and not result["refused"]:
        print("reload: nothing changed")
    return status


def add_commands(sub: Any) -> None:
    p = sub.add_parser("status", help="portals, sessions, LUNs, pairs and copy operations")
    add_socket_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_status)
    p = sub.add_parser("reload", help="re-read the configuration (as SIGHUP does)")
    add_socket_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_reload)
