"""A tape library's cartridges in a local directory: one tape image per cartridge, named
by its barcode (``BARCODE.img``), and the inventory (which element holds which
cartridge) in ``inventory.json`` beside them.

This module knows nothing of SCSI: the inventory is an opaque mapping the changer makes
and takes back. It is replaced whole (written to a temporary file, synced, renamed over
the old one, the directory synced), so a crash leaves the old inventory or the new one,
never half of one. Cartridges exported through the mail slot leave the library: their
image moves to ``exported/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backing.durable import replace_file, sync_directory
from backing.tape_image import HEADER, HEADER_SIZE, MAGIC, TapeImage, create
from backing.tape_s3 import S3Tape

# A cartridge as a drive holds it: an image file, or a tape in a bucket (same interface).
Tape = TapeImage | S3Tape

# How far a long move (an export) has got: (bytes done, bytes in all), from its thread.
MoveProgress = Callable[[int, int], None]

SUFFIX = ".img"
INVENTORY = "inventory.json"
EXPORTED = "exported"


class LibraryError(Exception):
    """A cartridge that cannot be made or found, or an unreadable inventory."""


class TapeDirectory:
    def __init__(self, path: Path, capacity: int) -> None:
        self.path = Path(path)
        self.capacity = capacity  # of new blank cartridges
        self.path.mkdir(parents=True, exist_ok=True)

    def image_path(self, barcode: str) -> Path:
        return self.path / f"{barcode}{SUFFIX}"

    def barcodes(self) -> list[str]:
        """Every cartridge in the directory, sorted."""
        return sorted(p.name[: -len(SUFFIX)] for p in self.path.glob(f"*{SUFFIX}") if p.is_file())

    def exists(self, barcode: str) -> bool:
        return self.image_path(barcode).is_file()

    def sweep(self) -> list[str]:
        """Blocking: clean up what crashed writers left in the store; what went. An image
        file mends itself when it is opened: nothing to do here."""
        return []

    def exported(self, barcode: str) -> bool:
        """The cartridge left the library through the mail slot (and is not made again)."""
        return (self.path / EXPORTED / self.image_path(barcode).name).exists()

    def usage(self, barcode: str) -> tuple[int, int]:
        """Blocking: (bytes used, capacity) of a cartridge, from its header and size (a
        torn tail an opening would cut counts as used until then)."""
        path = self.image_path(barcode)
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
        if len(raw) < HEADER_SIZE or raw[:8] != MAGIC:
            raise LibraryError(f"{path}: not a tape image")
        return max(0, size - HEADER_SIZE), HEADER.unpack(raw)[4]

    def create(self, barcode: str, capacity: int | None = None) -> None:
        """A blank cartridge; refused when one of that barcode exists."""
        path = self.image_path(barcode)
        if path.exists():
            raise LibraryError(f"cartridge {barcode} exists")
        create(path, capacity or self.capacity)
        sync_directory(self.path)

    def open(self, barcode: str, *, read_only: bool = False) -> Tape:
        """The cartridge's image, opened (a torn tail is cut back, as for any tape)."""
        path = self.image_path(barcode)
        if not path.is_file():
            raise LibraryError(f"cartridge {barcode} has no image in {self.path}")
        return TapeImage(path, read_only=read_only)

    def export(self, barcode: str, progress: MoveProgress | None = None) -> Path | str:
        """The cartridge leaves the library: its image moves to ``exported/`` (a rename:
        one progress report, all of it at once)."""
        out = self.path / EXPORTED
        out.mkdir(exist_ok=True)
        target = out / self.image_path(barcode).name
        if target.exists():
            raise LibraryError(f"{target} exists")
        size = self.image_path(barcode).stat().st_size
        os.rename(self.image_path(barcode), target)
        sync_directory(self.path)
        if progress is not None:
            progress(size, size)
        return target

    # -- the inventory --------------------------------------------------------------
    def load_inventory(self) -> dict[str, Any] | None:
        path = self.path / INVENTORY
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise LibraryError(f"{path}: unreadable inventory: {err}") from err
        if not isinstance(data, dict):
            raise LibraryError(f"{path}: the inventory is not an object")
        return data

    def save_inventory(self, inventory: dict[str, Any]) -> None:
        path = self.path / INVENTORY
        text = json.dumps(inventory, indent=1, sort_keys=True)
        replace_file(path, text.encode(), mode=0o666, tmp=path.with_suffix(".json.tmp"))
