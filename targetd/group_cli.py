"""``targetctl group create|add|remove|delete|split|resync|status|wait``: consistency groups
of pairs, over the admin socket (docs/pairs.md, "Consistency groups").

``group wait NAME --state STATE`` returns when every member's volumes are in STATE; exit
status as ``pair wait``: 0 reached, 1 refused or no daemon, 2 usage, 3 timed out, 4 a
member is SUSPENDED.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from targetd.pair_admin import parse_state
from targetd.pair_cli import (
    EXIT_SUSPENDED,
    EXIT_TIMEOUT,
    TTY_POLL,
    _common,
    _dump,
    _params,
    _scope,
    add_named_commands,
    render,
)
from targetd.status_cli import call


def add_commands(sub: Any) -> None:
    group = sub.add_parser("group", help="consistency groups: pairs that split at one instant")
    group_sub = group.add_subparsers(dest="group_command", required=True)

    p = group_sub.add_parser("create", help="a group of pairs (each mirroring, in no group)")
    p.add_argument("name", help="group name: [A-Za-z0-9][A-Za-z0-9._-], up to 32")
    p.add_argument("pairs", nargs="+", help="the member pairs' names")
    p.add_argument("--target", help="the iSCSI target (IQN) of the pairs; needed if several")
    _common(p, _members)

    for action, text in (
        ("add", "add pairs to a group (not while it is split)"),
        ("remove", "take pairs out of a group (they stay pairs)"),
    ):
        p = group_sub.add_parser(action, help=text)
        p.add_argument("name")
        p.add_argument("pairs", nargs="+")
        _scope(p)
        _common(p, _members)

    add_named_commands(
        group_sub,
        {
            "split": "split every pair of the group at one instant (all or nothing)",
            "resync": "resync every split or suspended pair of the group",
            "restore": "reverse resync: restore every source from its target (all SPLIT)",
            "delete": "forget the group; its pairs stay as they are",
            "status": "one group and its pairs, or every group",
            "wait": "wait until every pair of the group is in STATE",
        },
        "e.g. DUPLEX, SPLIT",
        (_action, _status, _wait),
    )


def _summary(g: dict[str, Any]) -> str:
    return f"group {g['name']}: {g['state']}, pairs {', '.join(g['pairs']) or '(none)'}"


def _members(args: argparse.Namespace) -> int:
    action = args.group_command
    g = call(args, f"group.{action}", _params(args, name=args.name, pairs=args.pairs))
    if args.json:
        _dump(g)
    else:
        print(_summary(g))
    return 0


def _action(args: argparse.Namespace) -> int:
    action = args.group_command
    result = call(args, f"group.{action}", _params(args, name=args.name))
    if args.json:
        _dump(result)
    elif action == "delete":
        print(f"group {args.name} deleted")
    else:
        dirty = sum(m["dirty_chunks"] for m in result["members"])
        verb = "reflect" if action == "split" else "copy"
        print(f"{_summary(result)} ({dirty} chunks to {verb})")
    return 0


def render_groups(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return "no groups\n"
    out = []
    for g in groups:
        out.append(f"{_summary(g)}\n")
        out.append(render(g["members"]) if g["members"] else "")
    return "".join(out)


def _status(args: argparse.Namespace) -> int:
    params = _params(args, name=args.name) if args.name else _params(args)
    result = call(args, "group.status", params)
    if args.json:
        _dump(result)
    else:
        sys.stdout.write(render_groups([result] if isinstance(result, dict) else result))
    return 0


def _wait(args: argparse.Namespace) -> int:
    try:
        state = parse_state(args.state)
    except ValueError as err:
        sys.exit(f"targetctl group wait: {err}")
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        g = call(args, "group.status", _params(args, name=args.name))
        sides = [(m["source_state"], m["target_state"]) for m in g["members"]]
        if all(s == (state.label, state.label) for s in sides):
            code = 0
        elif any(s[0] == "SUSPENDED" for s in sides):
            print(f"targetctl group wait: a pair of group {args.name} is SUSPENDED",
                  file=sys.stderr)  # fmt: skip
            code = EXIT_SUSPENDED
        elif deadline is not None and time.monotonic() >= deadline:
            print(f"targetctl group wait: timed out after {args.timeout:g} s; group"
                  f" {args.name} is {g['state']}", file=sys.stderr)  # fmt: skip
            code = EXIT_TIMEOUT
        else:
            time.sleep(TTY_POLL)
            continue
        if args.json:
            _dump({"reached": code == 0, "status": g})
        elif code == 0:
            print(_summary(g))
        return code
