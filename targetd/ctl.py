"""``targetctl``: the operator's command line. Each subcommand family lives in its own
module with an ``add_commands(subparsers)`` that sets ``run`` on its parsers; list new
modules in ``COMMAND_MODULES``.

The global options (``--state-dir``, ``--socket``, ``--json``) go before the subcommand or
after it, as with git and kubectl: ``targetctl --state-dir D pair status`` and
``targetctl pair status --state-dir D`` are the same command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

COMMAND_MODULES = (
    "targetd.status_cli",
    "targetd.tape_cli",
    "targetd.library_cli",
    "targetd.filesink_cli",
    "targetd.pair_cli",
    "targetd.group_cli",
)

# (option, dest): given before the subcommand they fill the subcommand's own option.
GLOBAL_OPTIONS = (("--state-dir", "state_dir"), ("--socket", "socket"), ("--json", "json"))
_GLOBAL = "global_"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="targetctl", description="control a running targetd")
    parser.add_argument(
        "--state-dir",
        dest=_GLOBAL + "state_dir",
        metavar="DIR",
        help="the daemon's state directory",
    )
    parser.add_argument(
        "--socket", dest=_GLOBAL + "socket", metavar="PATH", help="the admin socket itself"
    )
    parser.add_argument(
        "--json", dest=_GLOBAL + "json", action="store_true", help="machine-readable output"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for option, dest in GLOBAL_OPTIONS:
        given = getattr(args, _GLOBAL + dest)
        delattr(args, _GLOBAL + dest)
        if given in (None, False):
            continue
        if not hasattr(args, dest):  # e.g. `tape new` reads a file and talks to no daemon
            parser.error(f"{option} does not apply to this command")
        if getattr(args, dest) in (None, False):
            setattr(args, dest, given)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:
        # The reader went away (`targetctl tape export IMG --file 0 -o - | head`): stop
        # quietly with the status a shell gives a command SIGPIPE ended, as cat's, and point
        # stdout at /dev/null so the interpreter's flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
