"""``targetctl pair create|split|resync|delete|status|wait|policy``: volume pairs, over the
admin socket.

``pair wait`` is HORCM's pairevtwait: it returns when both volumes of the pair are in the
state asked for, drawing a progress bar on stderr (when it is a terminal) while the pair
copies. Exit status: 0 done, 1 refused or no daemon, 2 usage, 3 timed out, 4 the pair is
SUSPENDED (a copy failed; waiting longer cannot help).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import IO, Any

from backing.pairs import BackupPolicy
from targetd.pair_admin import MAX_WAIT, parse_state
from targetd.status_cli import add_socket_options, call

EXIT_TIMEOUT = 3
EXIT_SUSPENDED = 4
BAR_WIDTH = 30
TTY_POLL = 0.5  # seconds between progress redraws
MiB = 1 << 20
POLICY_NAMES = ", ".join(p.label for p in BackupPolicy)


def add_commands(sub: Any) -> None:
    pair = sub.add_parser("pair", help="create, split, resync, delete and watch volume pairs")
    pair_sub = pair.add_subparsers(dest="pair_command", required=True)

    p = pair_sub.add_parser("create", help="pair two block LUNs; the creation copy starts")
    p.add_argument("name", help="pair name: [A-Za-z0-9][A-Za-z0-9._-], up to 32")
    p.add_argument("source_lun", type=int)
    p.add_argument("target_lun", type=int)
    p.add_argument("--target", help="the iSCSI target (IQN) of both LUNs; needed if several")
    p.add_argument("--policy", help=f"backup policy of the pair ({POLICY_NAMES})")
    _force(p)
    _common(p, _create)

    p = pair_sub.add_parser("policy", help="set the pair's backup policy (kept with the pair)")
    p.add_argument("name")
    p.add_argument("policy", help=f"{POLICY_NAMES}, or default (the configured one)")
    _scope(p)
    _common(p, _policy)

    add_named_commands(
        pair_sub,
        {
            "split": "split at once: the target keeps the image of this instant",
            "resync": "back to DUPLEX, copying only what changed since the split",
            "restore": "reverse resync: restore the source from the target (hosts fenced)",
            "delete": "end the pair (both volumes SIMPLEX; the data stays)",
            "status": "one pair, or every pair",
            "wait": "wait until both volumes are in STATE (pairevtwait)",
        },
        "e.g. DUPLEX, SPLIT, SIMPLEX",
        (_action, _status, _wait),
    )


def add_named_commands(
    sub: Any, helps: dict[str, str], states: str, runs: tuple[Any, Any, Any]
) -> None:
    """The subcommands of a pair and of a group alike: split, resync, restore (with
    --force) and delete of NAME, ``status [NAME]`` and ``wait NAME --state STATE``; ``runs``
    are their handlers (the actions', status's, wait's)."""
    action, status, wait = runs
    for name in ("split", "resync", "restore", "delete"):
        p = sub.add_parser(name, help=helps[name])
        p.add_argument("name")
        _scope(p)
        if name != "delete":
            _force(p)
        _common(p, action)

    p = sub.add_parser("status", help=helps["status"])
    p.add_argument("name", nargs="?")
    _scope(p)
    _common(p, status)

    p = sub.add_parser("wait", help=helps["wait"])
    p.add_argument("name")
    p.add_argument("--state", required=True, help=states)
    p.add_argument("--timeout", type=float, help="seconds (default: no limit)")
    _scope(p)
    _common(p, wait)


def _scope(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target", help="the iSCSI target (IQN) the pair is on; needed if the name is on several"
    )


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="go ahead although another initiator has reserved a LUN the copy writes",
    )


def _params(args: argparse.Namespace, **params: Any) -> dict[str, Any]:
    """``params`` plus --target and --force, when given."""
    if getattr(args, "target", None):
        params["target"] = args.target
    if getattr(args, "force", False):
        params["force"] = True
    return params


def _common(p: argparse.ArgumentParser, run: Any) -> None:
    add_socket_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def _dump(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _states(p: dict[str, Any]) -> str:
    return f"{p['source_state']}/{p['target_state']}"


def _create(args: argparse.Namespace) -> int:
    params = _params(args, name=args.name, source_lun=args.source_lun, target_lun=args.target_lun)
    if args.policy:
        params["policy"] = args.policy
    p = call(args, "pair.create", params)
    if args.json:
        _dump(p)
    else:
        print(
            f"pair {p['name']}: LUN {p['source_lun']} -> LUN {p['target_lun']}, {_states(p)},"
            f" {p['dirty_chunks']} of {p['chunks']} chunks to copy"
        )
    return 0


def _action(args: argparse.Namespace) -> int:
    action = args.pair_command
    result = call(args, f"pair.{action}", _params(args, name=args.name))
    if args.json:
        _dump(result)
    elif action == "delete":
        print(f"pair {args.name} deleted")
    elif action == "split":
        print(
            f"pair {args.name} split: source {result['source_state']},"
            f" target {result['target_state']} ({result['dirty_chunks']} chunks to reflect)"
        )
    else:
        print(f"pair {args.name}: {_states(result)}, {result['dirty_chunks']} chunks to copy")
    return 0


def _policy(args: argparse.Namespace) -> int:
    p = call(args, "pair.policy", _params(args, name=args.name, policy=args.policy))
    if args.json:
        _dump(p)
    else:
        print(f"pair {p['name']}: backup policy {_policy_label(p)}")
    return 0


def _policy_label(p: dict[str, Any]) -> str:
    """``merge`` when set on the pair, ``merge*`` when it comes from the configuration."""
    policy = p.get("backup_policy", "?")
    return policy if p.get("backup_policy_set", True) else f"{policy}*"


def render(pairs: list[dict[str, Any]]) -> str:
    """The status table."""
    if not pairs:
        return "no pairs\n"
    head = (
        f"{'NAME':<16} {'SRC':>4} {'TGT':>4} {'SOURCE':<15} {'TARGET':<15}"
        f" {'SYNC%':>7} {'DIRTY':>8} {'CHANGED':>8} {'MiB/s':>8}  {'POLICY':<17} REASON"
    )
    lines = [head]  # POLICY: a trailing * means the configured one, not set on the pair
    for p in pairs:
        reason = "" if p["reason"] == "NONE" else p["reason"]
        if p.get("error"):
            reason += f": {p['error']}"
        lines.append(
            f"{p['name']:<16} {_lun(p['source_lun']):>4} {_lun(p['target_lun']):>4}"
            f" {p['source_state']:<15} {p['target_state']:<15}"
            f" {p['percent_in_sync']:>7.2f} {p['dirty_chunks']:>8} {p['changed_chunks']:>8}"
            f" {p['copy_rate'] / MiB:>8.1f}  {_policy_label(p):<17} {reason}".rstrip()
        )
    return "\n".join(lines) + "\n"


def _lun(n: int | None) -> str:
    return "?" if n is None else str(n)


def _status(args: argparse.Namespace) -> int:
    params = _params(args, name=args.name) if args.name else _params(args)
    result = call(args, "pair.status", params)
    if args.json:
        _dump(result)
    else:
        sys.stdout.write(render([result] if isinstance(result, dict) else result))
    return 0


class WaitProgress:
    """One redrawn line on a terminal while the pair copies; nothing otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.drawn = False

    def show(self, p: dict[str, Any] | None) -> None:
        if not self.enabled or p is None or p["dirty_chunks"] == 0:
            return
        frac = p["percent_in_sync"] / 100
        filled = int(frac * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(
            f"\r{p['name']} {_states(p)} [{bar}] {frac:6.1%}"
            f" {p['dirty_chunks']} chunks left {p['copy_rate'] / MiB:7.1f} MiB/s\033[K"
        )
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.drawn = False
            self.stream.write("\n")
            self.stream.flush()


def _wait(args: argparse.Namespace) -> int:
    try:
        state = parse_state(args.state)
    except ValueError as err:
        sys.exit(f"targetctl pair wait: {err}")
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    progress = WaitProgress(sys.stderr)
    # A terminal gets a redraw every TTY_POLL seconds; otherwise one long wait per request.
    step = TTY_POLL if progress.enabled else MAX_WAIT
    try:
        while True:
            left = step if deadline is None else max(0.0, min(step, deadline - time.monotonic()))
            params = _params(args, name=args.name, state=state.name, timeout=left)
            result = call(args, "pair.wait", params)
            p = result["status"]
            if result["reached"]:
                return _waited(args, p, 0)
            progress.show(p)
            if p is not None and p["source_state"] == "SUSPENDED":
                progress.finish()
                print(
                    f"targetctl pair wait: pair {args.name} is SUSPENDED ({p['reason']})",
                    file=sys.stderr,
                )
                return _waited(args, p, EXIT_SUSPENDED)
            if deadline is not None and time.monotonic() >= deadline:
                progress.finish()
                now = "gone" if p is None else _states(p)
                print(
                    f"targetctl pair wait: timed out after {args.timeout:g} s;"
                    f" pair {args.name} is {now}",
                    file=sys.stderr,
                )
                return _waited(args, p, EXIT_TIMEOUT)
    finally:
        progress.finish()


def _waited(args: argparse.Namespace, p: dict[str, Any] | None, code: int) -> int:
    if args.json:
        _dump({"reached": code == 0, "status": p})
    elif code == 0:
        print(f"pair {args.name}: {'SIMPLEX/SIMPLEX' if p is None else _states(p)}")
    return code
