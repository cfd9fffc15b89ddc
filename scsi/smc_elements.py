"""The element model of a media changer (SMC-3): typed element lists with addresses, the
cartridges (by barcode) in them, and the rules a move obeys. Sans-I/O: no file, no drive.

Addresses are fixed by type, so a library keeps them when it grows: the medium transport
(the robot) at 0001h, data transfer elements (the drives) from 0100h, import/export
elements (the mail slots) from 0200h, storage elements (the slots) from 0400h.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum, IntEnum

from scsi.sense import CheckCondition, Reason


class ElementType(IntEnum):
    """SMC-3 element type codes (READ ELEMENT STATUS, the address assignment page)."""

    ALL = 0
    TRANSPORT = 1
    STORAGE = 2
    IMPORT_EXPORT = 3
    DATA_TRANSFER = 4


FIRST_ADDRESS = {
    ElementType.TRANSPORT: 0x0001,
    ElementType.DATA_TRANSFER: 0x0100,
    ElementType.IMPORT_EXPORT: 0x0200,
    ElementType.STORAGE: 0x0400,
}
MAX_DRIVES = 0x100
MAX_MAIL_SLOTS = 0x200
MAX_SLOTS = 0xFFFF - 0x0400 + 1
BARCODE_LENGTH = 32  # a primary volume tag's identifier field


class Names(Enum):
    """What an element address field of a CDB must name: any other address is INVALID
    ELEMENT ADDRESS."""

    TRANSPORT = "transport"  # the medium transport; 0 names the default one
    HOLDER = "holder"  # an element that holds a cartridge: a slot, mail slot or drive
    ANY = "any"  # any element of the library


class ElementError(Exception):
    """An inventory that cannot be restored (an unknown address, a cartridge twice)."""


@dataclass(slots=True)
class Element:
    address: int
    type: ElementType
    barcode: str | None = None  # the cartridge in it, None when empty
    # The storage or import/export element the cartridge last came from (SVALID).
    source: int | None = None

    @property
    def full(self) -> bool:
        return self.barcode is not None


def valid_barcode(barcode: str) -> bool:
    """A volume tag: 1 to 32 printable ASCII characters, no spaces (they pad the field)."""
    return (
        0 < len(barcode) <= BARCODE_LENGTH
        and barcode.isascii()
        and barcode.isprintable()
        and " " not in barcode
        and "/" not in barcode
    )


class Elements:
    """Every element of one library, in address order within each type."""

    def __init__(self, *, slots: int, mail_slots: int, drives: int) -> None:
        if not 1 <= slots <= MAX_SLOTS or not 0 <= mail_slots <= MAX_MAIL_SLOTS:
            raise ValueError("slot counts out of range")
        if not 0 <= drives <= MAX_DRIVES:
            raise ValueError("drive count out of range")
        counts = {
            ElementType.TRANSPORT: 1,
            ElementType.DATA_TRANSFER: drives,
            ElementType.IMPORT_EXPORT: mail_slots,
            ElementType.STORAGE: slots,
        }
        self.lists: dict[ElementType, list[Element]] = {
            kind: [Element(FIRST_ADDRESS[kind] + i, kind) for i in range(count)]
            for kind, count in counts.items()
        }
        self.by_address = {e.address: e for lst in self.lists.values() for e in lst}
        # A cartridge's alternate volume tag (a second label the operator gave it), by
        # barcode: it goes wherever the cartridge goes.
        self.alternates: dict[str, str] = {}

    # -- lookups ----------------------------------------------------------------------
    def of_type(self, kind: ElementType) -> list[Element]:
        if kind == ElementType.ALL:  # in address order
            return sorted(self.by_address.values(), key=lambda e: e.address)
        return self.lists[kind]

    def first(self, kind: ElementType) -> int:
        return FIRST_ADDRESS[kind]

    def count(self, kind: ElementType) -> int:
        return len(self.lists[kind])

    def get(self, address: int) -> Element:
        element = self.by_address.get(address)
        if element is None:
            raise CheckCondition(Reason.INVALID_ELEMENT_ADDRESS)
        return element

    def drive_index(self, element: Element) -> int:
        return element.address - FIRST_ADDRESS[ElementType.DATA_TRANSFER]

    def drive(self, index: int) -> Element:
        return self.lists[ElementType.DATA_TRANSFER][index]

    def where(self, barcode: str) -> Element | None:
        return next((e for e in self.by_address.values() if e.barcode == barcode), None)

    def barcodes(self) -> Iterator[str]:
        return (e.barcode for e in self.by_address.values() if e.barcode is not None)

    def free(self, kind: ElementType) -> Element | None:
        return next((e for e in self.lists[kind] if not e.full), None)

    # -- moves ------------------------------------------------------------------------
    def named(self, address: int, names: Names) -> Element:
        """The element a CDB's address field names, or INVALID ELEMENT ADDRESS: an unknown
        address, a transport field naming no transport, or a holder field naming the
        transport (the robot holds nothing)."""
        if names is Names.TRANSPORT and address == 0:
            return self.lists[ElementType.TRANSPORT][0]  # the default one: the only one
        element = self.get(address)
        if names is not Names.ANY and (element.type == ElementType.TRANSPORT) != (
            names is Names.TRANSPORT
        ):
            raise CheckCondition(Reason.INVALID_ELEMENT_ADDRESS)
        return element

    @staticmethod
    def check_move(src: Element, dst: Element) -> None:
        """The SMC sense of a MOVE MEDIUM between holders: an empty source, a full
        destination."""
        if not src.full:
            raise CheckCondition(Reason.MEDIUM_SOURCE_ELEMENT_EMPTY)
        if dst.full and dst is not src:
            raise CheckCondition(Reason.MEDIUM_DESTINATION_ELEMENT_FULL)

    def move(self, src: Element, dst: Element) -> None:
        """The cartridge goes; the destination remembers the slot it came from."""
        if src is dst:
            return
        dst.barcode, src.barcode = src.barcode, None
        dst.source, src.source = self._home(src), None

    @staticmethod
    def check_exchange(src: Element, dst1: Element, dst2: Element) -> None:
        """The SMC sense of an EXCHANGE MEDIUM between holders: the source and the first
        destination both hold a cartridge (the first destination's goes on to the second
        destination), and the second destination is empty unless it is the source."""
        if dst1 in (src, dst2):
            raise CheckCondition(Reason.INVALID_ELEMENT_ADDRESS)
        if not src.full or not dst1.full:
            raise CheckCondition(Reason.MEDIUM_SOURCE_ELEMENT_EMPTY)
        if dst2.full and dst2 is not src:
            raise CheckCondition(Reason.MEDIUM_DESTINATION_ELEMENT_FULL)

    def exchange(self, src: Element, dst1: Element, dst2: Element) -> None:
        """The source's cartridge goes to the first destination, the first destination's
        to the second; each remembers the slot it came from."""
        moving = [(src.barcode, self._home(src)), (dst1.barcode, self._home(dst1))]
        for element in (src, dst1, dst2):
            element.barcode, element.source = None, None
        (dst1.barcode, dst1.source), (dst2.barcode, dst2.source) = moving

    @staticmethod
    def _home(element: Element) -> int | None:
        return element.source if element.type == ElementType.DATA_TRANSFER else element.address

    def place(self, barcode: str, kind: ElementType) -> Element | None:
        """A cartridge the library did not hold goes to the first free element of
        ``kind``; None when there is none."""
        element = self.free(kind)
        if element is not None:
            element.barcode, element.source = barcode, None
        return element

    def alternate(self, element: Element) -> str | None:
        return None if element.barcode is None else self.alternates.get(element.barcode)

    # -- the inventory as data (what the library keeps on disk) ------------------------
    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            f"{e.address:04x}": {"barcode": e.barcode, "source": e.source}
            for e in self.by_address.values()
            if e.full
        }

    def restore(self, inventory: dict[str, dict[str, object]], present: Iterable[str]) -> list[str]:
        """Take a snapshot back. Cartridges not in ``present`` (their image is gone) and
        elements the library no longer has are left out; what was left out is returned
        in words, for the log."""
        there = set(present)
        dropped = []
        for key, entry in inventory.items():
            try:
                address = int(key, 16)
            except ValueError as err:
                raise ElementError(f"element {key!r} is not a hex address") from err
            barcode, source = entry.get("barcode"), entry.get("source")
            if not isinstance(barcode, str) or not valid_barcode(barcode):
                raise ElementError(f"element {key}: bad barcode {barcode!r}")
            element = self.by_address.get(address)
            if barcode not in there:
                dropped.append(f"{barcode} (its image is gone)")
            elif element is None or element.type == ElementType.TRANSPORT:
                dropped.append(f"{barcode} (element {address:04x} is gone)")
            elif self.where(barcode) is not None:
                raise ElementError(f"cartridge {barcode} is in two elements")
            else:
                element.barcode = barcode
                element.source = source if isinstance(source, int) else None
        return dropped
