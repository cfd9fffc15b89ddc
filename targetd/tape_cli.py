"""``targetctl tape new|list|export``: make, inspect and unload tape images.

These work on the image file itself, not through the daemon: ``list`` and ``export`` open
it read-only (a torn tail is skipped, not cut, so a daemon writing the tape is not
disturbed), and ``new`` refuses to overwrite anything.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from backing.tape_image import TapeImage, TapeImageError, create
from targetd.config import DEFAULT_TAPE_CAPACITY, ConfigError, parse_size

PROGRESS_INTERVAL = 0.1  # seconds between progress bar redraws
BAR_WIDTH = 30


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tape = sub.add_parser("tape", help="make, list and export tape images")
    tape_sub = tape.add_subparsers(dest="tape_command", required=True)

    new = tape_sub.add_parser("new", help="write a blank tape image")
    new.add_argument("image", type=Path)
    new.add_argument(
        "--capacity", default=str(DEFAULT_TAPE_CAPACITY), help="e.g. 8GiB (default 8GiB)"
    )
    new.add_argument("--early-warning", help="size of the early-warning zone (default 1/32)")
    new.set_defaults(run=cmd_new)

    listing = tape_sub.add_parser("list", help="files, records and bytes on an image")
    listing.add_argument("image", type=Path)
    listing.set_defaults(run=cmd_list)

    export = tape_sub.add_parser("export", help="copy one tape file out to a regular file")
    export.add_argument("image", type=Path)
    export.add_argument("--file", type=int, required=True, help="tape file number, from 0")
    export.add_argument("-o", "--output", required=True, help="destination file, or - for stdout")
    export.set_defaults(run=cmd_export)


def _fail(message: str) -> int:
    print(f"targetctl tape: {message}", file=sys.stderr)
    return 1


def _open(path: Path) -> TapeImage:
    return TapeImage(path, read_only=True)


# -- new ---------------------------------------------------------------------------------------
def cmd_new(args: argparse.Namespace) -> int:
    try:
        capacity = parse_size(args.capacity, "--capacity")
        early = parse_size(args.early_warning, "--early-warning") if args.early_warning else None
        create(args.image, capacity, early_warning=early)
    except ConfigError as err:
        return _fail(str(err))
    except FileExistsError:
        return _fail(f"{args.image} exists; a new tape never overwrites one")
    except (ValueError, OSError) as err:
        return _fail(str(err))
    print(f"{args.image}: blank tape, capacity {capacity} bytes")
    return 0


# -- list --------------------------------------------------------------------------------------
@dataclass(slots=True)
class TapeFile:
    """One file of a tape: the records between two file marks (or before end of data)."""

    number: int
    first: int  # object number of its first record (or of its closing mark)
    end: int  # object number one past its last record
    records: int = 0
    bytes: int = 0
    smallest: int | None = None
    largest: int = 0
    closed: bool = False  # ended by a file mark, not by end of data


def tape_files(image: TapeImage) -> list[TapeFile]:
    """The files on ``image``, in order; a trailing file with no records and no mark (the
    space after the last mark) is left out."""
    files: list[TapeFile] = []
    start = 0
    marks = [image.filemark_index(n) for n in range(image.filemark_count())]
    for number, stop in enumerate([*marks, len(image)]):
        f = TapeFile(number, start, stop, closed=number < len(marks))
        for i in range(start, stop):
            n = image.length(i) or 0
            f.records += 1
            f.bytes += n
            f.smallest = n if f.smallest is None else min(f.smallest, n)
            f.largest = max(f.largest, n)
        if f.records or f.closed:
            files.append(f)
        start = stop + 1
    return files


def cmd_list(args: argparse.Namespace) -> int:
    try:
        image = _open(args.image)
    except (TapeImageError, OSError) as err:
        return _fail(str(err))
    with image:
        files = tape_files(image)
        print(f"{'file':>4} {'records':>9} {'bytes':>14} {'record sizes':>20}  end")
        for f in files:
            sizes = "-" if f.smallest is None else f"{f.smallest}..{f.largest}"
            if f.smallest == f.largest and f.smallest is not None:
                sizes = str(f.largest)
            end = "file mark" if f.closed else "end of data"
            print(f"{f.number:>4} {f.records:>9} {f.bytes:>14} {sizes:>20}  {end}")
        total_records = sum(f.records for f in files)
        total_bytes = sum(f.bytes for f in files)
        pct = 100 * image.used / image.capacity
        print(
            f"{len(files)} files, {total_records} records, {total_bytes} bytes;"
            f" {image.used} of {image.capacity} bytes used ({pct:.1f}%)"
            + ("; in the early-warning zone" if image.in_early_warning() else "")
        )
        if image.recovery.cut_bytes:
            print(f"note: {image.recovery.cut_bytes} bytes of torn tail after the last record")
    return 0


# -- export ------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on a terminal; silent when ``stream`` is not a tty."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty()
        self.done = 0
        self._drawn = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._drawn >= PROGRESS_INTERVAL:
            self._drawn = now
            self._draw()

    def _draw(self) -> None:
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        mib = 1 << 20
        self.stream.write(
            f"\r[{bar}] {frac:6.1%} {self.done / mib:9.1f} / {self.total / mib:.1f} MiB"
        )
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


def cmd_export(args: argparse.Namespace) -> int:
    try:
        image = _open(args.image)
    except (TapeImageError, OSError) as err:
        return _fail(str(err))
    with image:
        files = tape_files(image)
        chosen = next((f for f in files if f.number == args.file), None)
        if chosen is None:
            return _fail(f"{args.image} has no file {args.file} ({len(files)} files)")
        progress = Progress(chosen.bytes, sys.stderr)
        sink = (
            contextlib.nullcontext(sys.stdout.buffer)
            if args.output == "-"
            else open(args.output, "wb")  # noqa: SIM115 - the with below closes it
        )
        with sink as out:
            for record in image.records(chosen.first, chosen.end):
                out.write(record)
                progress.advance(len(record))
            out.flush()
        progress.finish()
    if args.output != "-":
        print(
            f"file {chosen.number}: {chosen.records} records, {chosen.bytes} bytes"
            f" -> {args.output}",
            file=sys.stderr,
        )
    return 0
