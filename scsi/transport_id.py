"""iSCSI TransportIDs (SPC-4 7.6.4.6): the initiator names PERSISTENT RESERVE OUT carries.

Format 00b names an initiator device (``iqn...``), format 01b one initiator port of it
(``iqn...,i,0x<ISID>``). Both are a 4-byte header (FORMAT CODE and PROTOCOL IDENTIFIER 5h,
ADDITIONAL LENGTH: a multiple of four) and a NUL-terminated UTF-8 name padded with NULs.
Every error names the byte it found wrong in the parameter list, so the sense carries a
field pointer an operator can follow.
"""

from __future__ import annotations

from dataclasses import dataclass

from scsi.sense import CheckCondition, FieldPointer, Reason

ISCSI_PROTOCOL = 0x5
NAME_ONLY, WITH_ISID = 0b00, 0b01
MIN_ADDITIONAL_LENGTH = 20
_ISID_SEPARATOR = ",i,0x"
_NAME_PREFIXES = ("iqn.", "eui.", "naa.")


@dataclass(frozen=True, slots=True)
class TransportId:
    """An iSCSI initiator device (``isid`` None) or one of its ports, lower case."""

    name: str
    isid: str | None = None

    @property
    def port(self) -> str:
        """The SCSI initiator port name (``name,i,0xISID``), or the bare name."""
        return self.name if self.isid is None else f"{self.name}{_ISID_SEPARATOR}{self.isid}"

    def encode(self) -> bytes:
        """The TransportID bytes: format 01b with an ISID, 00b without."""
        text = self.port.encode() + b"\0"
        text += bytes(-len(text) % 4)
        if len(text) < MIN_ADDITIONAL_LENGTH:
            text += bytes(MIN_ADDITIONAL_LENGTH - len(text))
        fmt = NAME_ONLY if self.isid is None else WITH_ISID
        return bytes([fmt << 6 | ISCSI_PROTOCOL, 0]) + len(text).to_bytes(2, "big") + text


def _invalid(byte: int, bit: int | None = None) -> CheckCondition:
    return CheckCondition(
        Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(byte, bit=bit, in_cdb=False)
    )


def parse_one(data: bytes, at: int, end: int) -> tuple[TransportId, int]:
    """The TransportID at ``data[at:]`` (no further than ``end``) and where the next one
    starts; CheckCondition INVALID FIELD IN PARAMETER LIST pointing at the bad field."""
    if end - at < 4:
        raise _invalid(at)
    if data[at] & 0x0F != ISCSI_PROTOCOL:
        raise _invalid(at, 3)
    fmt = data[at] >> 6
    if fmt not in (NAME_ONLY, WITH_ISID) or data[at] & 0x30:
        raise _invalid(at, 7)
    length = int.from_bytes(data[at + 2 : at + 4], "big")
    # SPC-4 asks for at least 20 bytes; shorter ones that are whole are accepted.
    if length == 0 or length % 4 or at + 4 + length > end:
        raise _invalid(at + 2)
    raw = data[at + 4 : at + 4 + length]
    text_end = raw.find(b"\0")
    if text_end <= 0:  # no terminating NUL, or an empty name
        raise _invalid(at + 4)
    try:
        text = raw[:text_end].decode("utf-8").lower()
    except UnicodeDecodeError:
        raise _invalid(at + 4) from None
    name, sep, isid = text.partition(_ISID_SEPARATOR)
    if fmt == NAME_ONLY and sep:
        raise _invalid(at, 7)  # an ISID where format 00b allows none
    # An ISID is 6 bytes: at most 12 hex digits.
    if fmt == WITH_ISID and (not sep or not 0 < len(isid) <= 12 or not _is_hex(isid)):
        raise _invalid(at + 4)
    if not name.startswith(_NAME_PREFIXES) or len(name) > 223 or "," in name:
        raise _invalid(at + 4)
    return TransportId(name, isid if fmt == WITH_ISID else None), at + 4 + length


def parse_list(data: bytes, at: int, end: int) -> list[TransportId]:
    """Every TransportID in ``data[at:end]``."""
    out = []
    while at < end:
        tid, at = parse_one(data, at, end)
        out.append(tid)
    return out


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
