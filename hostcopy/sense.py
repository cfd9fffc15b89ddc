"""Sense data in words: fixed and descriptor format, with the copy manager's extras
(failed segment, the copy target's own sense appended after byte 17)."""

from __future__ import annotations

from dataclasses import dataclass

from scsi.sense import Reason, SenseKey

# Names the daemon's table spells once; a few standard ones it never raises are added so a
# non-targetd copy manager's answer still reads as words.
_NAMES: dict[tuple[int, int, int], str] = {}
for _reason in Reason:
    _NAMES.setdefault(_reason.value, _reason.name.replace("_", " "))
_ASC_NAMES: dict[tuple[int, int], str] = {
    (0x04, 0x01): "LOGICAL UNIT IS IN PROCESS OF BECOMING READY",
    (0x3A, 0x00): "MEDIUM NOT PRESENT",
    (0x0D, 0x00): "ERROR DETECTED BY THIRD PARTY TEMPORARY INITIATOR",
    (0x29, 0x00): "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
}
_VENDOR_COPY_HINTS: dict[tuple[int, int, int], str] = {
    Reason.COPY_SOURCE_PAIR_NOT_SPLIT.value: "the source is the target volume of a pair that "
    "is not split",
    Reason.COPY_SPLIT_IMAGE_LOST.value: "the pair left the split state while the copy read it",
    Reason.COPY_ABORTED_BY_RESTART.value: "the daemon restarted while the copy ran",
    Reason.COPY_LABEL_MISCOMPARE.value: "the data on the medium does not hash to the SHA-256 "
    "its label records",
    Reason.COPY_NO_DIGEST.value: "no digest was running for this backup (a copy that fed it "
    "failed)",
    Reason.COPY_NO_END_LABEL.value: "the backup has no end label: it is partial",
}


@dataclass(frozen=True, slots=True)
class Sense:
    key: int
    asc: int
    ascq: int
    information: int | None = None
    command_specific: int = 0
    filemark: bool = False
    eom: bool = False
    ili: bool = False
    sks: bytes = b""
    source_sense: bytes = b""  # a copy target's own sense, appended (COPY ABORTED)
    destination_sense: bytes = b""


def parse(raw: bytes) -> Sense | None:
    if len(raw) < 8:
        return None
    code = raw[0] & 0x7F
    if code in (0x72, 0x73):
        info = None
        sks = b""
        csi = 0
        pos = 8
        while pos + 2 <= len(raw):
            kind, length = raw[pos], raw[pos + 1]
            body = raw[pos + 2 : pos + 2 + length]
            if kind == 0x00 and len(body) >= 10:
                info = int.from_bytes(body[2:10], "big")
            elif kind == 0x01 and len(body) >= 10:
                csi = int.from_bytes(body[2:10], "big")
            elif kind == 0x02 and len(body) >= 5:
                sks = body[2:5]
            pos += 2 + length
        return Sense(raw[1] & 0x0F, raw[2], raw[3], info, csi, sks=sks)
    if code not in (0x70, 0x71) or len(raw) < 14:
        return None
    valid = bool(raw[0] & 0x80)
    src_off, dst_off = (raw[8], raw[9]) if len(raw) > 9 else (0, 0)
    appended = raw[18:]

    def piece(offset: int) -> bytes:
        if offset < 18 or offset >= len(raw):
            return b""
        return raw[offset : offset + 8 + raw[offset + 7]] if offset + 8 <= len(raw) else b""

    copy_aborted = raw[2] & 0x0F == SenseKey.COPY_ABORTED
    return Sense(
        key=raw[2] & 0x0F,
        asc=raw[12],
        ascq=raw[13],
        information=int.from_bytes(raw[3:7], "big") if valid else None,
        command_specific=int.from_bytes(raw[8:12], "big"),
        filemark=bool(raw[2] & 0x80),
        eom=bool(raw[2] & 0x40),
        ili=bool(raw[2] & 0x20),
        sks=raw[15:18] if len(raw) >= 18 and raw[15] & 0x80 else b"",
        source_sense=piece(src_off) if copy_aborted and appended else b"",
        destination_sense=piece(dst_off) if copy_aborted and appended else b"",
    )


def name(key: int, asc: int, ascq: int) -> str:
    """``COPY ABORTED, COPY TARGET DEVICE DATA UNDERRUN (0A/0D/04)``."""
    try:
        key_name = SenseKey(key).name.replace("_", " ")
    except ValueError:
        key_name = f"SENSE KEY {key:X}h"
    words = _NAMES.get((key, asc, ascq)) or _ASC_NAMES.get((asc, ascq))
    if words is None and asc == 0 and ascq == 0:
        words = "NO ADDITIONAL SENSE"
    text = f"{key_name}, {words}" if words and words != key_name else key_name
    if words is None:
        text += f", ASC {asc:02X}h ASCQ {ascq:02X}h"
    return f"{text} ({key:02X}/{asc:02X}/{ascq:02X})"


def describe(raw: bytes) -> str:
    """The sense in words, with what a copy manager adds: the failed segment and the copy
    targets' own sense."""
    sense = parse(raw)
    if sense is None:
        return f"unparsable sense data {raw.hex()}" if raw else "no sense data"
    parts = [name(sense.key, sense.asc, sense.ascq)]
    hint = _VENDOR_COPY_HINTS.get((sense.key, sense.asc, sense.ascq))
    if hint:
        parts.append(hint)
    if sense.key == SenseKey.COPY_ABORTED:
        parts.append(f"failed segment {sense.command_specific & 0xFFFF}")
        if sense.information is not None:
            parts.append(f"residue {sense.information}")
    elif sense.sks and sense.sks[0] & 0x80 and sense.key == SenseKey.ILLEGAL_REQUEST:
        where = "CDB" if sense.sks[0] & 0x40 else "parameter list"
        parts.append(f"at byte {int.from_bytes(sense.sks[1:3], 'big')} of the {where}")
    for side, inner in (("source", sense.source_sense), ("destination", sense.destination_sense)):
        sub = parse(inner)
        if sub is not None:
            parts.append(f"the {side} said: {name(sub.key, sub.asc, sub.ascq)}")
    return "; ".join(parts)


def fixed(
    key: int, asc: int, ascq: int, field_pointer: int | None = None, in_cdb: bool = False
) -> bytes:
    """Fixed-format sense from decoded fields (what libiscsi hands over)."""
    raw = bytearray(18)
    raw[0], raw[2], raw[7], raw[12], raw[13] = 0x70, key & 0x0F, 10, asc, ascq
    if field_pointer is not None:
        raw[15] = 0x80 | (0x40 if in_cdb else 0)
        raw[16:18] = field_pointer.to_bytes(2, "big")
    return bytes(raw)
