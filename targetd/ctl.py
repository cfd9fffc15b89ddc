"""``targetctl``: the operator's command line. Each subcommand family lives in its own
module with an ``add_commands(subparsers)`` that sets ``run`` on its parsers; list new
modules in ``COMMAND_MODULES``."""

from __future__ import annotations

import argparse
import importlib

COMMAND_MODULES = (
    "targetd.status_cli",
    "targetd.tape_cli",
    "targetd.filesink_cli",
    "targetd.pair_cli",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="targetctl", description="control a running targetd")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
