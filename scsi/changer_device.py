"""The media changer logical unit (SMC-3, peripheral device type 08h) of a tape library,
and the library it moves cartridges in.

A :class:`TapeLibrary` is the state the changer and its drives share: the element model
(scsi.smc_elements), the directory of cartridge images (backing.tape_library), and the
drive LUs (TapeDevice, one per data transfer element, in element order). The changer's
commands (scsi.smc) and the operator's import and export change it; each change is
written to the directory's inventory before the command ends, so a restart finds every
cartridge where the last completed move put it.

Moving a cartridge into a drive opens its image on the drive's I/O thread and inserts it
(the drive's initiators get MEDIUM MAY HAVE CHANGED); moving it out writes it out and
closes it, unless an initiator of the drive prevented medium removal. Both wait for the
drive's current command, so a cartridge never leaves under a running READ or WRITE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from backing.tape_image import TapeImageError
from backing.tape_library import LibraryError, MoveProgress, TapeDirectory
from scsi.command import Nexus
from scsi.logical_unit import NO_SERVICES, Identity, Services
from scsi.mode import ModePage
from scsi.sense import CheckCondition, Reason
from scsi.smc import SMC_TABLE
from scsi.smc_elements import Element, ElementError, Elements, ElementType, valid_barcode
from scsi.stream_device import SerializedMedium
from scsi.tape_device import TapeDevice

log = logging.getLogger(__name__)


class TapeLibrary:
    """Elements, cartridges and drives of one library (built once, shared by its LUs)."""

    def __init__(
        self,
        directory: TapeDirectory,
        *,
        slots: int,
        mail_slots: int,
        drives: int,
        tapes: Iterable[str] = (),
    ) -> None:
        self.directory = directory
        self.elements = Elements(slots=slots, mail_slots=mail_slots, drives=drives)
        self.drives: list[TapeDevice | None] = [None] * drives
        self.changer: MediaChanger | None = None
        for barcode in tapes:  # the configuration's cartridges, made blank when absent
            if not directory.exists(barcode) and not directory.exported(barcode):
                directory.create(barcode)
        for key in directory.sweep():  # uploads no crashed writer of ours will mend
            log.warning("abandoned upload aborted", extra={"key": key})
        present = directory.barcodes()
        inventory = directory.load_inventory() or {}
        saved = inventory.get("elements", {})
        try:
            dropped = self.elements.restore(saved, present)
        except ElementError as err:
            raise LibraryError(f"{directory.path}: {err}") from err
        for note in dropped:
            log.warning("library inventory entry dropped", extra={"entry": note})
        for barcode in present:  # a cartridge the inventory does not know gets a slot
            missing = self.elements.where(barcode) is None
            if missing and self.elements.place(barcode, ElementType.STORAGE) is None:
                log.warning("no free slot for cartridge %s: not in the library", barcode)
        tags = inventory.get("alternate_tags", {})
        if isinstance(tags, dict):
            self.elements.alternates = {
                barcode: tag
                for barcode, tag in tags.items()
                if isinstance(tag, str) and valid_barcode(tag) and self.elements.where(barcode)
            }
        self.save()

    def save(self) -> None:
        """Blocking: the inventory, replaced whole on disk."""
        self.directory.save_inventory(
            {"elements": self.elements.snapshot(), "alternate_tags": self.elements.alternates}
        )

    def attach_drive(self, index: int, drive: TapeDevice) -> None:
        """Drive ``index`` (its LU just built): the cartridge the inventory puts in it
        goes back in, as it was at the last shutdown."""
        self.drives[index] = drive
        element = self.elements.drive(index)
        if element.barcode is not None and not drive.has_cartridge:
            drive.insert(self.directory.open(element.barcode), element.barcode)

    def drive_at(self, element: Element) -> TapeDevice:
        drive = self.drives[self.elements.drive_index(element)]
        if drive is None:
            raise CheckCondition(Reason.MEDIUM_LOAD_OR_EJECT_FAILED, message="drive not built")
        return drive


class MediaChanger(SerializedMedium):
    """The robot: commands run one at a time (SerializedMedium), inventory writes on the
    LU's I/O thread."""

    table = SMC_TABLE
    device_type = 0x08
    removable = False

    def __init__(
        self, identity: Identity, library: TapeLibrary, *, services: Services = NO_SERVICES
    ) -> None:
        super().__init__(identity, services)
        self.library = library
        library.changer = self
        # PREVENT ALLOW MEDIUM REMOVAL is per I_T nexus: the mail slots and the door stay
        # locked while any nexus prevents.
        self.preventing: set[Nexus] = set()

    @property
    def elements(self) -> Elements:
        return self.library.elements

    @property
    def removal_prevented(self) -> bool:
        return bool(self.preventing)

    def nexus_lost(self, nexus: Nexus) -> None:
        super().nexus_lost(nexus)
        self.preventing.discard(nexus)

    def reset(self, nexus: Nexus | None = None) -> None:
        super().reset(nexus)
        self.preventing.clear()

    # -- mode pages ---------------------------------------------------------------------
    def mode_pages(self) -> dict[int, ModePage]:
        e = self.elements
        assignment = bytearray(20)
        for offset, kind in (
            (2, ElementType.TRANSPORT),
            (6, ElementType.STORAGE),
            (10, ElementType.IMPORT_EXPORT),
            (14, ElementType.DATA_TRANSFER),
        ):
            assignment[offset : offset + 2] = e.first(kind).to_bytes(2, "big")
            assignment[offset + 2 : offset + 4] = e.count(kind).to_bytes(2, "big")
        geometry = bytes(4)  # one transport; it cannot rotate a cartridge
        capabilities = bytearray(20)
        # Storage: slots, mail slots and drives hold cartridges; the transport does not.
        capabilities[2] = 0x0E
        # MOVE MEDIUM and EXCHANGE MEDIUM between any two of ST, IE and DT.
        capabilities[4:8] = bytes([0x00, 0x0E, 0x0E, 0x0E])
        capabilities[12:16] = bytes([0x00, 0x0E, 0x0E, 0x0E])
        return {
            0x1D: ModePage(0x1D, bytes(assignment), bytes(20)),
            0x1E: ModePage(0x1E, geometry, bytes(4)),
            0x1F: ModePage(0x1F, bytes(capabilities), bytes(20)),
        }

    # -- moves ------------------------------------------------------------------------
    async def move(self, src: Element, dst: Element) -> None:
        """MOVE MEDIUM between holders (the caller holds ``medium_lock``): SMC sense and
        nothing moved, or the cartridge in its new element and the inventory on disk."""
        self.elements.check_move(src, dst)
        if src is dst:
            return
        assert src.barcode is not None
        await self._take_out(src)
        try:
            await self._put_in(dst, src.barcode)
        except CheckCondition:
            await self._put_in(src, src.barcode)  # back where it was
            raise
        self.elements.move(src, dst)
        await self.io(self.library.save)

    async def exchange(self, src: Element, dst1: Element, dst2: Element) -> None:
        """EXCHANGE MEDIUM between holders (the caller holds ``medium_lock``): the source's
        cartridge to the first destination, the first destination's to the second; SMC
        sense and nothing moved, or both moved and the inventory on disk."""
        self.elements.check_exchange(src, dst1, dst2)
        a, b = src.barcode, dst1.barcode
        assert a is not None and b is not None
        await self._take_out(src)
        try:
            await self._take_out(dst1)
        except CheckCondition:
            await self._put_in(src, a)
            raise
        done: list[Element] = []
        try:
            for element, barcode in ((dst1, a), (dst2, b)):
                await self._put_in(element, barcode)
                done.append(element)
        except CheckCondition:  # each cartridge back where it was
            for element in done:
                await self._take_out(element, force=True)
            await self._put_in(src, a)
            await self._put_in(dst1, b)
            raise
        self.elements.exchange(src, dst1, dst2)
        await self.io(self.library.save)

    async def _take_out(self, element: Element, *, force: bool = False) -> None:
        """A drive's cartridge written out and closed, unless an initiator of the drive
        prevents its removal; nothing to do for a slot."""
        if element.type != ElementType.DATA_TRANSFER:
            return
        drive = self.library.drive_at(element)
        async with drive.medium_lock:
            if drive.removal_prevented and not force:
                raise CheckCondition(Reason.MEDIUM_REMOVAL_PREVENTED)
            await drive.io(drive.eject)

    async def _put_in(self, element: Element, barcode: str) -> None:
        if element.type == ElementType.DATA_TRANSFER:
            await self._insert(self.library.drive_at(element), barcode)

    async def _insert(self, drive: TapeDevice, barcode: str) -> None:
        directory = self.library.directory
        async with drive.medium_lock:
            try:  # opening reads the image's index: on the drive's thread
                image = await drive.io(directory.open, barcode)
            except (OSError, LibraryError, TapeImageError) as err:
                log.error("cartridge %s does not load: %s", barcode, err)
                raise CheckCondition(Reason.MEDIUM_LOAD_OR_EJECT_FAILED, message=str(err)) from err
            # On the loop: the unit attentions it raises share state with logins.
            drive.insert(image, barcode)

    # -- the operator's side (targetctl library) -------------------------------------------
    async def import_cartridge(self, barcode: str, *, create: bool = True) -> int:
        """A cartridge put in a free mail slot (a blank one made when it does not exist);
        every initiator gets IMPORT OR EXPORT ELEMENT ACCESSED. Returns the element."""
        if not valid_barcode(barcode):
            raise LibraryError(f"{barcode!r} is not a barcode (1-32 printable characters)")
        async with self.medium_lock:
            self._check_door()
            if self.elements.where(barcode) is not None:
                raise LibraryError(f"cartridge {barcode} is already in the library")
            slot = self.elements.free(ElementType.IMPORT_EXPORT)
            if slot is None:
                raise LibraryError("every mail slot is full")
            directory = self.library.directory
            if not directory.exists(barcode):
                if not create:
                    raise LibraryError(f"cartridge {barcode} has no image")
                await self.io(directory.create, barcode)
            self.elements.place(barcode, ElementType.IMPORT_EXPORT)
            await self.io(self.library.save)
            self.raise_unit_attention(Reason.IMPORT_OR_EXPORT_ELEMENT_ACCESSED)
            return slot.address

    async def export_cartridge(self, barcode: str, progress: MoveProgress | None = None) -> str:
        """A cartridge in a mail slot taken out of the library (its image moves to
        ``exported/``); returns where the image went. ``progress(done, total)``: bytes
        moved so far, called from the changer's thread."""
        async with self.medium_lock:
            self._check_door()
            element = self.elements.where(barcode)
            if element is None or element.type != ElementType.IMPORT_EXPORT:
                raise LibraryError(f"cartridge {barcode} is not in a mail slot")
            target = await self.io(self.library.directory.export, barcode, progress)
            element.barcode, element.source = None, None
            self.elements.alternates.pop(barcode, None)
            await self.io(self.library.save)
            self.raise_unit_attention(Reason.IMPORT_OR_EXPORT_ELEMENT_ACCESSED)
            return str(target)

    async def tag_cartridge(self, barcode: str, alternate: str | None) -> None:
        """Give a cartridge in the library an alternate volume tag (READ ELEMENT STATUS
        reports it beside the barcode), or take it away (None)."""
        if alternate is not None and not valid_barcode(alternate):
            raise LibraryError(f"{alternate!r} is not a volume tag (1-32 printable characters)")
        async with self.medium_lock:
            if self.elements.where(barcode) is None:
                raise LibraryError(f"cartridge {barcode} is not in the library")
            if alternate is None:
                self.elements.alternates.pop(barcode, None)
            else:
                self.elements.alternates[barcode] = alternate
            await self.io(self.library.save)

    def _check_door(self) -> None:
        if self.removal_prevented:
            raise LibraryError("the mail slots are locked: an initiator prevents medium removal")

    async def inventory(self) -> list[dict[str, object]]:
        """Every element, for ``targetctl library list``, with each cartridge's usage (a
        cartridge out of a drive is looked up in its store, on the changer's thread)."""
        rows: list[dict[str, object]] = []
        for element in self.elements.of_type(ElementType.ALL):
            if element.type == ElementType.TRANSPORT:
                continue
            row: dict[str, object] = {
                "address": element.address,
                "type": element.type.name.lower(),
                "barcode": element.barcode,
            }
            alternate = self.elements.alternate(element)
            if alternate is not None:
                row["alternate"] = alternate
            if element.type == ElementType.DATA_TRANSFER:
                drive = self.library.drives[self.elements.drive_index(element)]
                if drive is not None and drive.has_cartridge:
                    row["used"] = drive.image.used
                    row["capacity"] = drive.image.capacity
                    # Records a crash took that opening could not bring back (S3 tapes).
                    lost = getattr(drive.image.recovery, "lost", 0)
                    if lost:
                        row["lost"] = lost
            if element.barcode is not None and "used" not in row:
                try:
                    used, capacity = await self.io(self.library.directory.usage, element.barcode)
                except (OSError, LibraryError, ValueError) as err:
                    row["error"] = str(err)
                else:
                    row["used"], row["capacity"] = used, capacity
            rows.append(row)
        return rows
