"""SMC-3 commands of the media changer LU: READ ELEMENT STATUS, MOVE MEDIUM, EXCHANGE
MEDIUM, INITIALIZE ELEMENT STATUS (and WITH RANGE), POSITION TO ELEMENT, PREVENT ALLOW
MEDIUM REMOVAL.

``SMC_TABLE`` is SPC's table with these layered on (INQUIRY, VPD, MODE SENSE/SELECT with
the changer's pages 1Dh-1Fh, TEST UNIT READY, REQUEST SENSE and REPORT LUNS come from SPC).
The inventory is always known, so INITIALIZE ELEMENT STATUS only checks its fields, and
POSITION TO ELEMENT has no robot to move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from scsi.command import ScsiCommand, ScsiResult
from scsi.opcodes import OpcodeTable
from scsi.sense import CheckCondition, FieldPointer, Reason
from scsi.smc_elements import BARCODE_LENGTH, Element, ElementType, Names
from scsi.spc import SPC_TABLE

if TYPE_CHECKING:
    from scsi.changer_device import MediaChanger

SMC_TABLE = OpcodeTable("smc", SPC_TABLE)
_cmd = SMC_TABLE.command

# Element descriptor flag bits (byte 2)
FULL, IMPEXP, EXCEPT, ACCESS, EXENAB, INENAB = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
SVALID = 0x80
DATA_MEDIUM = 0x01  # MEDIUM TYPE
PVOLTAG, AVOLTAG = 0x80, 0x40
VOLTAG, DVCID = 0x10, 0x01


def _invalid(byte: int, bit: int | None = None) -> CheckCondition:
    return CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(byte, bit=bit))


def _u16(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


# -- READ ELEMENT STATUS ---------------------------------------------------------------------
def _volume_tag(barcode: str | None) -> bytes:
    """A volume tag (primary or alternate): the label space-padded to 32 bytes, 2
    reserved, sequence 0; all zero for an empty element or a missing tag."""
    if barcode is None:
        return bytes(36)
    return barcode.encode("ascii").ljust(BARCODE_LENGTH, b" ") + bytes(4)


def _identifier(lu: MediaChanger, element: Element, dvcid: bool) -> bytes:
    """The identification fields closing every descriptor: a drive's T10 vendor id
    (vendor, product, serial; what backup software matches a drive's /dev/sg to) when
    DVCID asks for it, else empty."""
    if not dvcid or element.type != ElementType.DATA_TRANSFER:
        return bytes(4)
    drive = lu.library.drives[lu.elements.drive_index(element)]
    if drive is None:
        return bytes(4)
    ident = drive.identity
    text = (
        ident.vendor.encode().ljust(8)[:8]
        + ident.product.encode().ljust(16)[:16]
        + ident.serial.encode()
    )
    return bytes([0x02, 0x01, 0, len(text)]) + text  # ASCII, T10 vendor id


def _descriptor(
    lu: MediaChanger, element: Element, voltag: bool, avoltag: bool, dvcid: bool
) -> bytes:
    flags = FULL if element.full else 0
    if element.type != ElementType.TRANSPORT:
        flags |= ACCESS
    if element.type == ElementType.IMPORT_EXPORT:
        flags |= INENAB | EXENAB
        if element.full and element.source is None:  # put there by the operator
            flags |= IMPEXP
    head = bytearray(12)
    head[0:2] = element.address.to_bytes(2, "big")
    head[2] = flags
    if element.full:
        head[9] = DATA_MEDIUM | (SVALID if element.source is not None else 0)
    if element.source is not None:
        head[10:12] = element.source.to_bytes(2, "big")
    tag = _volume_tag(element.barcode) if voltag else b""
    if avoltag:
        tag += _volume_tag(lu.elements.alternate(element))
    return bytes(head) + tag + _identifier(lu, element, dvcid)


def _page(
    lu: MediaChanger, kind: ElementType, run: list[Element], voltag: bool, dvcid: bool
) -> bytes:
    # Alternate volume tags are in a page (every descriptor of it) when one of its
    # cartridges has one, so a library without them reads as before.
    avoltag = voltag and any(lu.elements.alternate(e) is not None for e in run)
    descriptors = [_descriptor(lu, e, voltag, avoltag, dvcid) for e in run]
    length = max(len(d) for d in descriptors)
    # One page, one descriptor length: a shorter identifier is padded.
    body = b"".join(d.ljust(length, b"\0") for d in descriptors)
    header = (
        bytes([kind, (PVOLTAG if voltag else 0) | (AVOLTAG if avoltag else 0)])
        + length.to_bytes(2, "big")
        + b"\0"
        + len(body).to_bytes(3, "big")
    )
    return header + body


@_cmd(
    0xB8,
    "READ ELEMENT STATUS",
    bytes([0xB8, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0x03, 0xFF, 0xFF, 0xFF, 0, 0x07]),
)
async def read_element_status(lu: MediaChanger, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    if cdb[1] & 0xE0:
        raise _invalid(1)
    try:
        kind = ElementType(cdb[1] & 0x0F)
    except ValueError:
        raise _invalid(1, 3) from None
    if cdb[6] & 0xFC:
        raise _invalid(6)
    voltag, dvcid = bool(cdb[1] & VOLTAG), bool(cdb[6] & DVCID)
    start, number = _u16(cdb[2:4]), _u16(cdb[4:6])
    allocation = int.from_bytes(cdb[7:10], "big")
    chosen = sorted(
        (e for e in lu.elements.of_type(kind) if e.address >= start), key=lambda e: e.address
    )[:number]
    pages = b""
    i = 0
    while i < len(chosen):  # consecutive elements of one type share a page
        j = i
        while j < len(chosen) and chosen[j].type == chosen[i].type:
            j += 1
        pages += _page(lu, chosen[i].type, chosen[i:j], voltag, dvcid)
        i = j
    first = chosen[0].address if chosen else 0
    header = (
        first.to_bytes(2, "big")
        + len(chosen).to_bytes(2, "big")
        + b"\0"
        + len(pages).to_bytes(3, "big")
    )
    return ScsiResult(data=(header + pages)[:allocation])


# -- moving and the rest ---------------------------------------------------------------------
class _Refused(NamedTuple):
    """Bits of a CDB byte this changer refuses: INVALID FIELD IN CDB, the field pointer naming
    the highest bit set where each bit is a flag of its own."""

    byte: int
    mask: int = 0xFF
    flags: bool = False


@dataclass(frozen=True)
class _Fields:
    """What a command's CDB must hold before anything moves: no refused bit, then the
    element addresses (2-byte fields from byte 2 on) naming what each must name."""

    refused: tuple[_Refused, ...]
    elements: tuple[Names, ...] = ()


# INVERT, INV1 and INV2 are refused: the transport cannot rotate a cartridge.
_FIELDS = {
    0xA5: _Fields(
        (_Refused(1), _Refused(10, 0x01, flags=True)),
        (Names.TRANSPORT, Names.HOLDER, Names.HOLDER),
    ),
    0xA6: _Fields(
        (_Refused(1), _Refused(10, 0x03, flags=True)),
        (Names.TRANSPORT, Names.HOLDER, Names.HOLDER, Names.HOLDER),
    ),
    0x37: _Fields((_Refused(1, 0xFC),), (Names.ANY,)),  # the first element, with RANGE
    0x2B: _Fields((_Refused(1), _Refused(8, 0x01, flags=True)), (Names.TRANSPORT, Names.ANY)),
    0x1E: _Fields((_Refused(4, 0x02, flags=True),)),  # PREVENT is 0 or 1
}


def _checked(lu: MediaChanger, cdb: bytes, *, elements: bool = True) -> list[Element]:
    """The elements the CDB names, once its fields pass the command's checks in
    ``_FIELDS``; SMC sense for the first that fails."""
    fields = _FIELDS[cdb[0]]
    for byte, mask, flags in fields.refused:
        if bits := cdb[byte] & mask:
            raise _invalid(byte, bits.bit_length() - 1 if flags else None)
    if not elements:
        return []
    return [
        lu.elements.named(_u16(cdb[2 + 2 * i : 4 + 2 * i]), names)
        for i, names in enumerate(fields.elements)
    ]


@_cmd(
    0xA5,
    "MOVE MEDIUM",
    bytes([0xA5, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0x07]),
)
async def move_medium(lu: MediaChanger, cmd: ScsiCommand) -> ScsiResult:
    _, src, dst = _checked(lu, cmd.cdb)  # one robot moves every cartridge
    await lu.move(src, dst)
    return ScsiResult()


@_cmd(
    0xA6,
    "EXCHANGE MEDIUM",
    bytes([0xA6, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x03, 0x07]),
)
async def exchange_medium(lu: MediaChanger, cmd: ScsiCommand) -> ScsiResult:
    _, src, dst1, dst2 = _checked(lu, cmd.cdb)
    await lu.exchange(src, dst1, dst2)
    return ScsiResult()


@_cmd(0x07, "INITIALIZE ELEMENT STATUS", bytes([0x07, 0, 0, 0, 0, 0x07]))
async def initialize_element_status(lu: MediaChanger, cmd: ScsiCommand) -> ScsiResult:
    return ScsiResult()


@_cmd(
    0x37,
    "INITIALIZE ELEMENT STATUS WITH RANGE",
    bytes([0x37, 0x03, 0xFF, 0xFF, 0, 0, 0xFF, 0xFF, 0, 0x07]),
)
async def initialize_element_status_with_range(lu: MediaChanger, cmd: ScsiCommand) -> ScsiResult:
    _checked(lu, cmd.cdb, elements=bool(cmd.cdb[1] & 0x01))  # RANGE: the first must exist
    return ScsiResult()


@_cmd(
    0x2B,
    "POSITION TO ELEMENT",
    bytes([0x2B, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0x07]),
)
async def position_to_element(lu: MediaChanger, cmd: ScsiCommand) -> ScsiResult:
    _checked(lu, cmd.cdb)  # no robot to move: the elements need only exist
    return ScsiResult()


@_cmd(0x1E, "PREVENT ALLOW MEDIUM REMOVAL", bytes([0x1E, 0, 0, 0, 0x03, 0x07]))
async def prevent_allow_medium_removal(lu: MediaChanger, cmd: ScsiCommand) -> ScsiResult:
    """Locks the mail slots and the door against the operator (targetctl library
    import/export) while any I_T nexus prevents; MOVE MEDIUM is not affected."""
    _checked(lu, cmd.cdb)
    if cmd.cdb[4] & 0x01:
        lu.preventing.add(cmd.nexus)
    else:
        lu.preventing.discard(cmd.nexus)
    return ScsiResult()
