"""Sense data formats and LUN addressing."""

from __future__ import annotations

from scsi.sense import CheckCondition, FieldPointer, Reason, build_sense, parse_sense
from scsi.target import decode_lun, encode_lun, encode_report_luns


def test_fixed_sense_with_field_pointer_and_information() -> None:
    sense = build_sense(Reason.INVALID_FIELD_IN_CDB, field=FieldPointer(2, bit=5), information=9)
    assert sense[0] == 0xF0  # current error, VALID (INFORMATION set)
    assert sense[2] == 0x05 and sense[3:7] == bytes([0, 0, 0, 9]) and sense[7] == 10
    assert (sense[12], sense[13]) == (0x24, 0x00)
    assert sense[15:18] == bytes([0x80 | 0x40 | 0x08 | 5, 0, 2])  # SKSV, C/D, BPV, bit 5
    assert parse_sense(sense) == (5, 0x24, 0)


def test_descriptor_sense_carries_the_same_facts() -> None:
    cc = CheckCondition(Reason.MISCOMPARE_DURING_VERIFY, information=0x1234, ili=True)
    sense = cc.sense(descriptor_format=True)
    assert sense[:4] == bytes([0x72, 0x0E, 0x1D, 0x00])
    assert sense[8:12] == bytes([0x00, 0x0A, 0x80, 0x00])  # information descriptor, VALID
    assert int.from_bytes(sense[12:20], "big") == 0x1234
    assert sense[20:24] == bytes([0x04, 0x02, 0x00, 0x20])  # stream commands: ILI
    assert sense[7] == len(sense) - 8
    assert parse_sense(sense) == (0x0E, 0x1D, 0)


def test_tape_bits_in_fixed_sense() -> None:
    sense = build_sense(Reason.NO_SENSE, filemark=True, eom=True, information=3)
    assert sense[2] == 0x80 | 0x40


def test_lun_encoding_round_trips_both_addressing_methods() -> None:
    for lun in (0, 1, 255, 256, 16383):
        assert decode_lun(encode_lun(lun)) == lun
    assert encode_lun(3) == bytes([0, 3, 0, 0, 0, 0, 0, 0])
    assert encode_lun(300)[0] >> 6 == 1  # flat space addressing
    assert decode_lun(bytes([0xC0, 1, 0, 0, 0, 0, 0, 0])) == 0xFFFF  # unsupported method
    data = encode_report_luns([0, 2])
    assert data[:4] == (16).to_bytes(4, "big") and data[8:24] == encode_lun(0) + encode_lun(2)


def test_an_empty_cdb_gets_invalid_opcode() -> None:
    import asyncio

    from scsi.command import Nexus, ScsiCommand, Status
    from scsi.logical_unit import Identity, LogicalUnit
    from scsi.spc import SPC_TABLE

    class Unit(LogicalUnit):
        table = SPC_TABLE

    result = asyncio.run(Unit(Identity("x")).execute(ScsiCommand(b"", 0, Nexus("i"))))
    assert result.status == Status.CHECK_CONDITION
    assert result.sense is not None and parse_sense(result.sense) == (5, 0x20, 0)
