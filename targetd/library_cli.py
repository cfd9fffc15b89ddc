"""``targetctl library list|import|export|tag``: a running daemon's tape library, through the
admin socket (targetd.library_admin; docs/tape.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hostcopy.progress import Progress
from targetd.status_cli import add_socket_options, call


def add_commands(sub: Any) -> None:
    library = sub.add_parser("library", help="a tape library's cartridges and mail slots")
    library_sub = library.add_subparsers(dest="library_command", required=True)
    listing = library_sub.add_parser("list", help="every slot, mail slot and drive")
    _common(listing, _list)
    imported = library_sub.add_parser(
        "import", help="put a cartridge in a free mail slot (a blank one when it is new)"
    )
    imported.add_argument("barcode")
    imported.add_argument(
        "--existing", action="store_true", help="refuse to make a blank cartridge"
    )
    _common(imported, _import)
    exported = library_sub.add_parser("export", help="take a cartridge out of a mail slot")
    exported.add_argument("barcode")
    _common(exported, _export)
    tagged = library_sub.add_parser(
        "tag", help="give a cartridge an alternate volume tag, or take it away"
    )
    tagged.add_argument("barcode")
    which = tagged.add_mutually_exclusive_group(required=True)
    which.add_argument("--alternate", metavar="TAG", help="the alternate volume tag")
    which.add_argument("--clear", action="store_true", help="remove the alternate volume tag")
    _common(tagged, _tag)


def _common(p: argparse.ArgumentParser, run: Any) -> None:
    add_socket_options(p)
    p.add_argument("--target", help="the target of the changer (several libraries)")
    p.add_argument("--lun", type=int, help="the changer's LUN (several libraries)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def _params(args: argparse.Namespace, **params: Any) -> dict[str, Any]:
    if args.target:
        params["target"] = args.target
    if args.lun is not None:
        params["lun"] = args.lun
    return params


def _dump(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _list(args: argparse.Namespace) -> int:
    result = call(args, "library.list", _params(args))
    if args.json:
        _dump(result)
        return 0
    print(f"library {result['target']} lun {result['lun']}")
    print(f"{'element':>7}  {'type':<13} {'barcode':<32} used")
    for e in result["elements"]:
        used = ""
        if "used" in e:
            used = f"{e['used']} of {e['capacity']} bytes ({100 * e['used'] / e['capacity']:.1f}%)"
        elif "error" in e:
            used = f"? ({e['error']})"
        if "lost" in e:
            used += f"; {e['lost']} record(s) lost in a crash"
        barcode = e["barcode"] or "-"
        if "alternate" in e:
            used = f"{used}  alternate {e['alternate']}".lstrip()
        print(f"{e['address']:>#7x}  {e['type']:<13} {barcode:<32} {used}".rstrip())
    return 0


def _import(args: argparse.Namespace) -> int:
    params = _params(args, barcode=args.barcode, create=not args.existing)
    result = call(args, "library.import", params)
    if args.json:
        _dump(result)
    else:
        print(f"{result['barcode']}: in mail slot {result['element']:#x}")
    return 0


def _export(args: argparse.Namespace) -> int:
    # The move of a large cartridge (an S3 one is copied object by object) takes a while:
    # a bar on a terminal, a line every few seconds otherwise, on stderr.
    bar: Progress | None = None

    def moved(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(total, f"export {args.barcode}")
        bar.update(done)

    result = call(args, "library.export", _params(args, barcode=args.barcode), progress=moved)
    if bar is not None:
        bar.finish()
    if args.json:
        _dump(result)
    else:
        print(f"{result['barcode']}: out of the library, image at {result['image']}")
    return 0


def _tag(args: argparse.Namespace) -> int:
    params = _params(args, barcode=args.barcode, alternate=None if args.clear else args.alternate)
    result = call(args, "library.tag", params)
    if args.json:
        _dump(result)
    elif result["alternate"] is None:
        print(f"{result['barcode']}: no alternate volume tag")
    else:
        print(f"{result['barcode']}: alternate volume tag {result['alternate']}")
    return 0
