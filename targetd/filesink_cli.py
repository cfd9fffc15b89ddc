"""``targetctl filesink list|export``: what a file sink directory holds.

A file sink keeps one plain file per backup (tape file), so ``cmp`` works on them as they
are; these commands list them with sizes and SHA-256 and copy one out, reading the
directory directly (not through the daemon).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

from backing.file_sink import list_files

CHUNK = 1 << 20


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sink = sub.add_parser("filesink", help="list and export what a file sink LUN holds")
    sink_sub = sink.add_subparsers(dest="filesink_command", required=True)
    listing = sink_sub.add_parser("list", help="files, sizes and SHA-256 of a file sink")
    listing.add_argument("directory", type=Path)
    listing.add_argument("--no-hash", action="store_true", help="sizes only (faster)")
    listing.set_defaults(run=cmd_list)
    export = sink_sub.add_parser("export", help="copy one file of a file sink out")
    export.add_argument("directory", type=Path)
    export.add_argument("--file", type=int, required=True, help="file number, from 0")
    export.add_argument("-o", "--output", required=True, help="destination file, or - for stdout")
    export.set_defaults(run=cmd_export)


def _fail(message: str) -> int:
    print(f"targetctl filesink: {message}", file=sys.stderr)
    return 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cmd_list(args: argparse.Namespace) -> int:
    if not args.directory.is_dir():
        return _fail(f"{args.directory} is not a file sink directory")
    files = list_files(args.directory)
    print(f"{'file':>4} {'bytes':>14}  {'sha256' if not args.no_hash else ''}".rstrip())
    for f in files:
        digest = "" if args.no_hash else _sha256(f.path)
        print(f"{f.number:>4} {f.size:>14}  {digest}".rstrip())
    print(f"{len(files)} files, {sum(f.size for f in files)} bytes")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    files = list_files(args.directory)
    if not 0 <= args.file < len(files):
        return _fail(f"no file {args.file}: the sink holds {len(files)}")
    source = files[args.file].path
    if args.output == "-":
        with source.open("rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer, CHUNK)
        return 0
    shutil.copyfile(source, args.output)
    print(f"file {args.file}: {files[args.file].size} bytes to {args.output}")
    return 0
