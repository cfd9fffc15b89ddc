"""Sense data in words: what the tool prints when a copy or a command fails."""

from __future__ import annotations

from hostcopy.sense import describe, fixed, parse
from scsi.sense import CheckCondition, FieldPointer, Reason, build_sense


def test_copy_aborted_with_the_destinations_sense_appended() -> None:
    inner = build_sense(Reason.LBA_OUT_OF_RANGE)
    raw = bytearray(build_sense(Reason.COPY_ABORTED_NO_ADDITIONAL_SENSE, information=256))
    raw[7] = 10 + len(inner)
    raw[9] = 18  # destination sense at byte 18
    raw[10:12] = (3).to_bytes(2, "big")  # failed segment 3
    raw = bytes(raw[:18]) + inner
    text = describe(raw)
    assert text.startswith("COPY ABORTED, COPY ABORTED NO ADDITIONAL SENSE (0A/00/00)")
    assert "failed segment 3" in text
    assert "residue 256" in text
    assert "the destination said: ILLEGAL REQUEST, LBA OUT OF RANGE (05/21/00)" in text


def test_vendor_pair_codes_read_as_words() -> None:
    text = describe(build_sense(Reason.COPY_SOURCE_PAIR_NOT_SPLIT))
    assert "COPY SOURCE PAIR NOT SPLIT (0A/80/02)" in text
    assert "pair that is not split" in text
    assert "PAIR WRONG STATE (05/80/02)" in describe(build_sense(Reason.PAIR_WRONG_STATE))


def test_parameter_list_field_pointer() -> None:
    cc = CheckCondition(Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(72, in_cdb=False))
    text = describe(cc.sense())
    assert text == (
        "ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (05/26/00); "
        "at byte 72 of the parameter list"
    )
    assert describe(cc.sense(descriptor_format=True)) == text


def test_filemark_and_ili_bits_and_unknown_codes() -> None:
    s = parse(build_sense(Reason.FILEMARK_DETECTED, filemark=True, information=5))
    assert s is not None and s.filemark and s.information == 5
    assert describe(fixed(0x04, 0x99, 0x42)) == ("HARDWARE ERROR, ASC 99h ASCQ 42h (04/99/42)")
    assert describe(b"") == "no sense data"
    assert describe(b"\x70\x00").startswith("unparsable")


def test_rebuilt_sense_keeps_the_field_pointer() -> None:
    text = describe(fixed(0x05, 0x24, 0x00, 2, in_cdb=True))
    assert text.endswith("at byte 2 of the CDB")
