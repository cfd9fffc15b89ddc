"""Standard INQUIRY data and the SPC vital product data pages (00h, 80h, 83h, 86h).

A device type adds its own pages through ``LogicalUnit.vpd_pages()`` (page code to a
builder of the whole page, header included), and the services a LU was built with add
theirs (``Services.vpd_pages``: xcopy's third-party copy page 8Fh); 00h lists them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from construct import BitsInteger, BitStruct, Bytes, Flag, Int8ub, Int16ub, Struct, this

from scsi.command import Nexus

if TYPE_CHECKING:
    from scsi.logical_unit import LogicalUnit

# Version descriptors (SPC-4 table 49): what the LU claims to conform to.
SAM_5 = 0x00A0
ISCSI = 0x0960
SPC_4 = 0x0460
SBC_3 = 0x04C0
SSC_3 = 0x0400
SMC_3 = 0x0480
DEVICE_TYPE_STANDARDS = {0x00: (SBC_3,), 0x01: (SSC_3,), 0x08: (SMC_3,)}

PROTOCOL_ISCSI = 0x5

# Designator types and code sets of the Device Identification page (SPC-4 7.8.6).
CODE_SET_BINARY, CODE_SET_ASCII, CODE_SET_UTF8 = 1, 2, 3
ASSOC_LU, ASSOC_TARGET_PORT, ASSOC_TARGET_DEVICE = 0, 1, 2
TYPE_T10, TYPE_NAA, TYPE_RELATIVE_PORT, TYPE_PORT_GROUP, TYPE_SCSI_NAME = 1, 3, 4, 5, 8

Designator = Struct(
    "head"
    / BitStruct(
        "protocol" / BitsInteger(4),
        "code_set" / BitsInteger(4),
        "piv" / Flag,
        "_reserved" / BitsInteger(1),
        "association" / BitsInteger(2),
        "type" / BitsInteger(4),
    ),
    "_reserved" / Int8ub,
    "length" / Int8ub,
    "designator" / Bytes(this.length),
)


def designator(
    code_set: int, association: int, dtype: int, value: bytes, *, protocol: int | None = None
) -> bytes:
    """One designation descriptor; a protocol makes PIV set (port designators)."""
    return Designator.build(
        {
            "head": {
                "protocol": protocol or 0,
                "code_set": code_set,
                "piv": protocol is not None,
                "_reserved": 0,
                "association": association,
                "type": dtype,
            },
            "_reserved": 0,
            "length": len(value),
            "designator": value,
        }
    )


def _ascii(text: str, width: int) -> bytes:
    return text.encode("ascii", "replace")[:width].ljust(width, b" ")


def _peripheral(lu: LogicalUnit) -> int:
    return lu.device_type & 0x1F  # qualifier 000b: the LU is connected


def standard_inquiry(lu: LogicalUnit) -> bytes:
    """96 bytes of standard INQUIRY data (SPC-4 6.4.2)."""
    data = bytearray(96)
    data[0] = _peripheral(lu)
    data[1] = 0x80 if lu.removable else 0
    data[2] = 0x06  # SPC-4
    data[3] = 0x10 | 0x02  # HiSup, response data format 2
    data[4] = len(data) - 5
    # TPGS 01b: implicit ALUA only (states change by configuration, not by SET TARGET
    # PORT GROUPS); 3PC when the LU serves EXTENDED COPY.
    data[5] = 0x10 | (0x08 if lu.third_party_copy else 0)
    data[7] = 0x02  # CmdQue
    ident = lu.identity
    data[8:16] = _ascii(ident.vendor, 8)
    data[16:32] = _ascii(ident.product, 16)
    data[32:36] = _ascii(ident.revision, 4)
    versions = (
        SAM_5,
        ISCSI,
        SPC_4,
        *DEVICE_TYPE_STANDARDS.get(lu.device_type, ()),
        *getattr(lu, "version_descriptors", ()),
    )
    for i, version in enumerate(versions[:8]):
        data[58 + 2 * i : 60 + 2 * i] = version.to_bytes(2, "big")
    return bytes(data)


def _page(lu: LogicalUnit, code: int, body: bytes) -> bytes:
    return bytes([_peripheral(lu), code]) + len(body).to_bytes(2, "big") + body


def supported_pages(lu: LogicalUnit, nexus: Nexus) -> bytes:
    codes = sorted(set(SPC_PAGES) | set(lu.vpd_pages()) | set(lu.services.vpd_pages))
    return _page(lu, 0x00, bytes(codes))


def unit_serial_number(lu: LogicalUnit, nexus: Nexus) -> bytes:
    return _page(lu, 0x80, lu.identity.serial.encode("ascii"))


def device_identification(lu: LogicalUnit, nexus: Nexus) -> bytes:
    """NAA and T10 vendor-id designators of the LU, then the target port's: relative
    target port, SCSI name (when known) and target port group (ALUA).

    EXTENDED COPY (sg_xcopy) names its source and destination by the NAA designator, so
    it stays the first descriptor and is derived from the LU's durable identity.
    """
    ident = lu.identity
    descs = [
        designator(CODE_SET_BINARY, ASSOC_LU, TYPE_NAA, ident.naa),
        designator(
            CODE_SET_ASCII, ASSOC_LU, TYPE_T10, _ascii(ident.vendor, 8) + ident.serial.encode()
        ),
        designator(
            CODE_SET_BINARY,
            ASSOC_TARGET_PORT,
            TYPE_RELATIVE_PORT,
            bytes(2) + Int16ub.build(nexus.relative_target_port & 0xFFFF),
            protocol=PROTOCOL_ISCSI,
        ),
    ]
    if nexus.target_port:
        name = nexus.target_port.encode() + b"\0"
        name += b"\0" * (-len(name) % 4)
        descs.append(
            designator(
                CODE_SET_UTF8, ASSOC_TARGET_PORT, TYPE_SCSI_NAME, name, protocol=PROTOCOL_ISCSI
            )
        )
    group = lu.port_groups.group_of(nexus.relative_target_port)
    descs.append(
        designator(
            CODE_SET_BINARY,
            ASSOC_TARGET_PORT,
            TYPE_PORT_GROUP,
            bytes(2) + Int16ub.build(group.id),
            protocol=PROTOCOL_ISCSI,
        )
    )
    return _page(lu, 0x83, b"".join(descs))


def extended_inquiry(lu: LogicalUnit, nexus: Nexus) -> bytes:
    body = bytearray(60)
    body[1] = 0x07  # HEADSUP, ORDSUP, SIMPSUP: every task attribute is accepted
    body[3] = 0x01  # LUICLR: SAM-5 requires unit attentions be cleared per I_T_L nexus
    return _page(lu, 0x86, bytes(body))


SPC_PAGES: dict[int, Callable[[LogicalUnit, Nexus], bytes]] = {
    0x00: supported_pages,
    0x80: unit_serial_number,
    0x83: device_identification,
    0x86: extended_inquiry,
}


def vpd_page(lu: LogicalUnit, code: int, nexus: Nexus) -> bytes | None:
    """The whole VPD page ``code`` for ``lu``, or None if the LU has no such page."""
    if code in SPC_PAGES:
        return SPC_PAGES[code](lu, nexus)
    service = lu.services.vpd_pages.get(code)
    if service is not None:
        return service(lu, nexus)
    builder = lu.vpd_pages().get(code)
    return builder() if builder is not None else None
