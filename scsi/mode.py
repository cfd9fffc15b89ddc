"""Mode pages and the MODE SENSE / MODE SELECT (6) and (10) machinery.

API for device types
--------------------
A mode page is a :class:`ModePage`: page code, subpage, the default bytes and the
changeable mask, both laid out as the whole page exactly as the standard tables show it
(bytes 0-1, or 0-3 for subpage format, are the header: their content is ignored and
rewritten, so byte offsets in code match the spec). ``current`` is a bytearray of the
same layout. Example, the SBC caching page with WCE changeable::

    ModePage(0x08, default=bytes(20), changeable=bytes([0, 0, 0x04]) + bytes(17),
             on_change=lambda page: ...)

``page.bit(2, 0x04)`` tests a bit of the current values. ``on_change(page)`` runs after a
MODE SELECT changed the page (the control page uses it to switch D_SENSE).

A logical unit contributes device pages through ``LogicalUnit.mode_pages()`` (any mapping
whose values are ModePage objects). It is called once per LU, when the LU's
:class:`ModePageSet` is first needed (``lu.mode``), and the returned objects then hold the
LU's live mode state: keep references to them to read current values.
The header's block descriptor comes from ``lu.block_descriptor()`` (8 bytes) or, for
MODE SENSE(10) with LLBAA, ``lu.long_block_descriptor()`` (16 bytes); MODE SELECT hands
a received descriptor to ``lu.select_block_descriptor(raw)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from scsi.command import ScsiCommand, ScsiResult
from scsi.sense import CheckCondition, FieldPointer, Reason

if TYPE_CHECKING:
    from scsi.logical_unit import LogicalUnit

ALL_PAGES = 0x3F
ALL_SUBPAGES = 0xFF
PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3


class ModePage:
    """One mode page's default, changeable and current values (whole-page layout)."""

    def __init__(
        self,
        page: int,
        default: bytes,
        changeable: bytes,
        *,
        subpage: int = 0,
        on_change: Callable[[ModePage], None] | None = None,
    ) -> None:
        if len(default) != len(changeable):
            raise ValueError("default and changeable masks differ in length")
        self.page = page
        self.subpage = subpage
        self.header_length = 4 if subpage else 2
        self.default = self._with_header(default)
        self.changeable = bytes(self.header_length) + bytes(changeable[self.header_length :])
        self.current = bytearray(self.default)
        self.on_change = on_change

    @property
    def key(self) -> tuple[int, int]:
        return (self.page, self.subpage)

    def _with_header(self, body: bytes) -> bytes:
        raw = bytearray(body)
        length = len(raw) - self.header_length
        if self.subpage:
            raw[0:4] = bytes([0x40 | self.page, self.subpage]) + length.to_bytes(2, "big")
        else:
            raw[0:2] = bytes([self.page, length])
        return bytes(raw)

    def bit(self, offset: int, mask: int) -> bool:
        return bool(self.current[offset] & mask)

    def encode(self, pc: int) -> bytes:
        if pc == PC_CHANGEABLE:
            return self._with_header(self.changeable)
        if pc == PC_DEFAULT:
            return self.default
        return bytes(self.current)

    def check(self, raw: bytes, offset: int) -> None:
        """Refuse ``raw`` (a page from a parameter list at ``offset``) if it is malformed or
        changes a bit that is not changeable."""
        if len(raw) != len(self.default):
            raise CheckCondition(
                Reason.INVALID_FIELD_IN_PARAMETER_LIST,
                FieldPointer(offset + 1, in_cdb=False),
            )
        for i in range(self.header_length, len(raw)):
            if (raw[i] ^ self.current[i]) & ~self.changeable[i] & 0xFF:
                raise CheckCondition(
                    Reason.INVALID_FIELD_IN_PARAMETER_LIST,
                    FieldPointer(offset + i, in_cdb=False),
                )

    def apply(self, raw: bytes) -> bool:
        """Take the changeable bits of ``raw``; True if the current values changed."""
        new = bytearray(self.current)
        for i in range(self.header_length, len(raw)):
            mask = self.changeable[i]
            new[i] = (self.current[i] & ~mask & 0xFF) | (raw[i] & mask)
        if new == self.current:
            return False
        self.current = new
        if self.on_change is not None:
            self.on_change(self)
        return True


class ModePageSet:
    """Every mode page of one LU, in page/subpage order."""

    def __init__(self, pages: Iterable[ModePage]) -> None:
        self.pages = {p.key: p for p in pages}

    def get(self, page: int, subpage: int = 0) -> ModePage | None:
        return self.pages.get((page, subpage))

    def select(self, page: int, subpage: int) -> list[ModePage]:
        """The pages a MODE SENSE page/subpage code pair asks for."""
        ordered = [self.pages[k] for k in sorted(self.pages)]
        if page == ALL_PAGES:
            if subpage == 0:
                return [p for p in ordered if p.subpage == 0]
            if subpage == ALL_SUBPAGES:
                return ordered
            return []
        if subpage == ALL_SUBPAGES:
            return [p for p in ordered if p.page == page]
        found = self.pages.get((page, subpage))
        return [found] if found is not None else []


SWP = 0x08  # control page byte 4: software write protect


def control_page(lu: LogicalUnit) -> ModePage:
    """Control mode page 0Ah: D_SENSE picks the sense format; SWP (block LUs) makes the
    medium write-protected until cleared, as an administrator would with a switch."""
    default = bytearray(12)
    default[2] = 0x04 if lu.descriptor_sense else 0
    default[3] = 0x10  # QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
    default[8:10] = b"\xff\xff"  # BUSY TIMEOUT PERIOD: unlimited
    changeable = bytearray(12)
    changeable[2] = 0x04
    swp = lu.supports_software_write_protect
    if swp:
        changeable[4] = SWP

    def follow(page: ModePage) -> None:
        lu.descriptor_sense = page.bit(2, 0x04)
        if swp:
            lu.software_write_protect = page.bit(4, SWP)

    return ModePage(0x0A, bytes(default), bytes(changeable), on_change=follow)


def informational_exceptions_page() -> ModePage:
    """Page 1Ch: exceptions are disabled (DEXCPT) since the LU has nothing to predict."""
    default = bytearray(12)
    default[2] = 0x08
    return ModePage(0x1C, bytes(default), bytes(12))


def spc_pages(lu: LogicalUnit) -> list[ModePage]:
    return [control_page(lu), informational_exceptions_page()]


# -- MODE SENSE --------------------------------------------------------------------------
def _sense_pages(lu: LogicalUnit, cdb: bytes) -> tuple[int, bytes]:
    pc, page, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
    if pc == PC_SAVED:
        raise CheckCondition(Reason.SAVING_PARAMETERS_NOT_SUPPORTED, FieldPointer(2, bit=7))
    pages = lu.mode.select(page, subpage)
    if not pages:
        if page == ALL_PAGES or lu.mode.select(page, ALL_SUBPAGES):
            raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(3))
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2, bit=5))
    return pc, b"".join(p.encode(pc) for p in pages)


async def mode_sense6(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if cdb[1] & ~0x08 & 0xFF:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1))
    _, pages = _sense_pages(lu, cdb)
    descriptor = b"" if cdb[1] & 0x08 else (lu.block_descriptor() or b"")
    length = 3 + len(descriptor) + len(pages)
    header = bytes([min(length, 0xFF), 0, lu.mode_device_specific(), len(descriptor)])
    return ScsiResult(data=(header + descriptor + pages)[: cdb[4]])


async def mode_sense10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if cdb[1] & ~0x18 & 0xFF:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1))
    _, pages = _sense_pages(lu, cdb)
    descriptor, long_lba = b"", 0
    if not cdb[1] & 0x08:
        long_descriptor = lu.long_block_descriptor() if cdb[1] & 0x10 else None
        if long_descriptor is not None:
            descriptor, long_lba = long_descriptor, 1
        else:
            descriptor = lu.block_descriptor() or b""
    length = 6 + len(descriptor) + len(pages)
    header = (
        length.to_bytes(2, "big")
        + bytes([0, lu.mode_device_specific(), long_lba, 0])
        + len(descriptor).to_bytes(2, "big")
    )
    allocation = int.from_bytes(cdb[7:9], "big")
    return ScsiResult(data=(header + descriptor + pages)[:allocation])


# -- MODE SELECT -------------------------------------------------------------------------
def _parameter_list(cmd: ScsiCommand, length: int) -> bytes:
    data = bytes(cmd.data_out or b"")
    if len(data) < length:
        raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
    return data[:length]


def _select(lu: LogicalUnit, cmd: ScsiCommand, data: bytes, header_length: int) -> ScsiResult:
    cdb = cmd.cdb
    if cdb[1] & 0x01:  # SP: nothing here is saveable
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=0))
    if not data:
        return ScsiResult()
    if len(data) < header_length:
        raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
    descriptor_length = data[3] if header_length == 4 else int.from_bytes(data[6:8], "big")
    offset = header_length + descriptor_length
    if offset > len(data):
        raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
    if descriptor_length:
        lu.select_block_descriptor(data[header_length:offset])
    if offset < len(data) and not cdb[1] & 0x10:  # pages need PF: we have no vendor format
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=4))
    accepted: list[tuple[ModePage, bytes]] = []
    while offset < len(data):
        head = data[offset]
        spf = bool(head & 0x40)
        if offset + (4 if spf else 2) > len(data):
            raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
        if spf:
            subpage, end = (
                data[offset + 1],
                offset + 4 + int.from_bytes(data[offset + 2 : offset + 4], "big"),
            )
        else:
            subpage, end = 0, offset + 2 + data[offset + 1]
        page = lu.mode.get(head & 0x3F, subpage)
        if page is None:
            raise CheckCondition(
                Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(offset, in_cdb=False)
            )
        if end > len(data):
            raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
        raw = data[offset:end]
        page.check(raw, offset)
        accepted.append((page, raw))
        offset = end
    changed = False
    for page, raw in accepted:
        changed |= page.apply(raw)
    if changed:
        lu.raise_unit_attention(Reason.MODE_PARAMETERS_CHANGED, except_nexus=cmd.nexus)
    return ScsiResult()


async def mode_select6(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    if cmd.cdb[1] & 0xEE:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1))
    return _select(lu, cmd, _parameter_list(cmd, cmd.cdb[4]), 4)


async def mode_select10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    if cmd.cdb[1] & 0xEE:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1))
    length = int.from_bytes(cmd.cdb[7:9], "big")
    return _select(lu, cmd, _parameter_list(cmd, length), 8)
