"""Tape libraries on the admin socket (``targetctl library ...``, docs/tape.md).

``library.list``   {target?, lun?} -> {target, lun, elements: [{address, type, barcode,
                   used?, capacity?, error?, lost?}]}: every cartridge's usage (bytes on
                   it and its capacity), from its drive or its store; ``lost``: records
                   and file marks a crash took that the drive's opening could not bring
                   back (an S3 tape whose spool was lost or torn)
``library.import`` {barcode, target?, lun?, create?} -> {barcode, element}: the cartridge
                   (a blank one made unless it exists; ``create`` false refuses to make
                   one) put in a free mail slot
``library.export`` {barcode, target?, lun?} -> {barcode, image}: a cartridge in a mail
                   slot leaves the library (its image moves to ``exported/``); reports
                   progress (bytes moved) to a request that asks for it (targetd.admin)
``library.tag``    {barcode, alternate, target?, lun?} -> {barcode, alternate}: the
                   cartridge's alternate volume tag set (a string) or removed (null)

``target`` and ``lun`` name the changer where the daemon serves more than one
(``ambiguous-library``). Refusals: ``no-library``, ``library`` (a full mail slot, a
locked door, an unknown cartridge ...), ``bad_request``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from scsi.logical_unit import LogicalUnit
from targetd.admin import Admin, AdminError, Report

if TYPE_CHECKING:
    from scsi.changer_device import MediaChanger

Params = dict[str, Any]
LunMaps = Callable[[], Mapping[str, Mapping[int, LogicalUnit]]]


class LibraryAdmin:
    def __init__(self, lun_maps: LunMaps) -> None:
        self.lun_maps = lun_maps

    def register(self, admin: Admin) -> None:
        admin.register("library.list", self.list_elements)
        admin.register("library.import", self.import_cartridge)
        admin.register("library.export", self.export_cartridge, progress=True)
        admin.register("library.tag", self.tag_cartridge)

    def _changer(self, params: Params) -> tuple[str, int, MediaChanger]:
        target, lun = params.get("target"), params.get("lun")
        # The tape modules load with the first changer LUN built (targetd.luns): not loaded,
        # there is none.
        changers = sys.modules.get("scsi.changer_device")
        found = [] if changers is None else [
            (name, number, lu)
            for name, luns in self.lun_maps().items()
            for number, lu in luns.items()
            if isinstance(lu, changers.MediaChanger)
            and target in (None, name)
            and lun in (None, number)
        ]
        if not found:
            raise AdminError("no such tape library (a LUN of kind changer)", "no-library")
        if len(found) > 1:
            raise AdminError("several libraries: give target and lun", "ambiguous-library")
        return found[0]

    @staticmethod
    def _barcode(params: Params) -> str:
        barcode = params.get("barcode")
        if not isinstance(barcode, str) or not barcode:
            raise AdminError("barcode: a non-empty string is required", "bad_request")
        return barcode

    async def list_elements(self, params: Params) -> dict[str, Any]:
        target, lun, changer = self._changer(params)
        return {"target": target, "lun": lun, "elements": await changer.inventory()}

    async def import_cartridge(self, params: Params) -> dict[str, Any]:
        _, _, changer = self._changer(params)
        from backing.tape_library import LibraryError  # loaded with the changer

        barcode = self._barcode(params)
        try:
            element = await changer.import_cartridge(barcode, create=params.get("create", True))
        except LibraryError as err:
            raise AdminError(str(err), "library") from None
        return {"barcode": barcode, "element": element}

    async def export_cartridge(self, params: Params, report: Report) -> dict[str, Any]:
        _, _, changer = self._changer(params)
        from backing.tape_library import LibraryError  # loaded with the changer

        barcode = self._barcode(params)
        try:
            image = await changer.export_cartridge(barcode, progress=report)
        except LibraryError as err:
            raise AdminError(str(err), "library") from None
        return {"barcode": barcode, "image": image}

    async def tag_cartridge(self, params: Params) -> dict[str, Any]:
        _, _, changer = self._changer(params)
        from backing.tape_library import LibraryError  # loaded with the changer

        barcode = self._barcode(params)
        alternate = params.get("alternate")
        if alternate is not None and not isinstance(alternate, str):
            raise AdminError("alternate: a string or null is required", "bad_request")
        try:
            await changer.tag_cartridge(barcode, alternate)
        except LibraryError as err:
            raise AdminError(str(err), "library") from None
        return {"barcode": barcode, "alternate": alternate}
