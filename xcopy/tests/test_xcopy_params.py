"""The pure parameter-list decoder: every length limit and its sense, with field pointers
into the parameter list."""

from __future__ import annotations

import pytest
from helpers_xcopy import cscd
from xcopy_lists import lid1, lid4, seg_b2b, seg_b2s, seg_filemarks

from scsi.sense import CheckCondition, Reason
from xcopy import limits
from xcopy.params import LID1, LID4, USAGE_NO_HOLD, decode

NAA = bytes.fromhex("6001405" + "0" * 25)


def _cscd() -> bytes:
    return cscd(None, designator=NAA)


def _fails(sa: int, data: bytes) -> CheckCondition:
    with pytest.raises(CheckCondition) as info:
        decode(sa, data)
    return info.value


def test_empty_list_is_a_no_op() -> None:
    assert decode(LID1, b"") is None
    assert decode(LID4, b"") is None


def test_lid1_decodes_header_cscd_and_segment() -> None:
    data = lid1([_cscd()], [seg_b2b(0, 0, 2048, 7, 9000, dc=True)], list_id=5, usage=2)
    cl = decode(LID1, data)
    assert cl is not None
    assert (cl.list_id, cl.list_id_usage, cl.service_action) == (5, USAGE_NO_HOLD, LID1)
    (c,) = cl.cscds
    assert (c.index, c.offset, c.code_set, c.association, c.designator_type) == (0, 16, 1, 0, 3)
    assert c.designator == NAA and c.block_length == 512 and not c.nul
    (s,) = cl.segments
    assert (s.type_code, s.offset, s.dc, s.blocks, s.source_lba, s.destination_lba) == (
        0x02,
        48,
        True,
        2048,
        7,
        9000,
    )


def test_lid4_header_immed_and_g_sense() -> None:
    data = lid4(
        [_cscd()], [seg_b2s(0, 0, 4096, 8, 3)], list_id=0x01020304, immed=True, g_sense=True
    )
    cl = decode(LID4, data)
    assert cl is not None
    assert (cl.list_id, cl.immed, cl.g_sense) == (0x01020304, True, True)
    (s,) = cl.segments
    assert (s.type_code, s.stream_length, s.blocks, s.source_lba) == (0x00, 4096, 8, 3)


def test_truncated_lists_are_parameter_list_length_errors() -> None:
    data = lid1([_cscd()], [seg_b2b(0, 0, 1, 0, 1)])
    for cut in (1, 15, 16 + 31, len(data) - 1):
        assert _fails(LID1, data[:cut]).reason is Reason.PARAMETER_LIST_LENGTH_ERROR
    assert _fails(LID4, lid4([], [])[:47]).reason is Reason.PARAMETER_LIST_LENGTH_ERROR


def test_descriptor_list_longer_than_the_limit() -> None:
    n = limits.MAX_DESCRIPTOR_LIST_LENGTH // 28 + 1
    data = lid1([_cscd()], [seg_b2b(0, 0, 1, 0, 1)] * n)
    assert _fails(LID1, data).reason is Reason.PARAMETER_LIST_LENGTH_ERROR


def test_too_many_cscd_and_segment_descriptors() -> None:
    cc = _fails(LID1, lid1([_cscd()] * (limits.MAX_CSCD_DESCRIPTORS + 1), [seg_b2b(0, 0, 1, 0, 1)]))
    assert cc.reason is Reason.TOO_MANY_TARGET_DESCRIPTORS
    assert cc.sense()[15:18] == bytes([0x80, 0, 2])  # field pointer: CSCD list length
    cc = _fails(
        LID1, lid1([_cscd()], [seg_b2b(0, 0, 1, 0, 1)] * (limits.MAX_SEGMENT_DESCRIPTORS + 1))
    )
    assert cc.reason is Reason.TOO_MANY_SEGMENT_DESCRIPTORS


def test_unsupported_descriptor_types_point_at_the_descriptor() -> None:
    cc = _fails(LID1, lid1([_cscd(), cscd(None, designator=NAA, type_code=0xE0)], []))
    assert cc.reason is Reason.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE
    assert cc.sense()[15:18] == bytes([0x80, 0, 48])
    stream_to_stream = bytes([0x03, 0, 0, 0x10]) + bytes(16)
    cc = _fails(LID1, lid1([_cscd()], [seg_b2b(0, 0, 1, 0, 1), stream_to_stream]))
    assert cc.reason is Reason.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE
    assert cc.sense()[15:18] == bytes([0x80, 0, 48 + 28])


def test_wrong_segment_length_and_reserved_usage() -> None:
    bad = bytearray(seg_b2b(0, 0, 1, 0, 1))
    bad[3] = 0x14
    cc = _fails(LID1, lid1([_cscd()], [bytes(bad[:24])]))
    assert cc.reason is Reason.INVALID_FIELD_IN_PARAMETER_LIST
    assert cc.sense()[15:18] == bytes([0x80, 0, 48 + 2])
    cc = _fails(LID1, lid1([_cscd()], [], usage=1))
    assert cc.reason is Reason.INVALID_FIELD_IN_PARAMETER_LIST
    assert cc.sense()[15] == 0x80 | 0x08 | 4 and cc.sense()[17] == 1


def test_inline_data_limit_and_immed_without_list_id() -> None:
    data = lid1([_cscd()], [], inline=bytes(limits.MAX_INLINE_DATA_LENGTH + 4))
    assert _fails(LID1, data).reason is Reason.INLINE_DATA_LENGTH_EXCEEDED
    assert _fails(LID4, lid4([], [], usage=3, immed=True)).reason is (
        Reason.INVALID_FIELD_IN_PARAMETER_LIST
    )


def test_setmarks_are_refused() -> None:
    mark = bytearray(seg_filemarks(0, 1))
    mark[8] = 0x02
    cc = _fails(LID1, lid1([_cscd()], [bytes(mark)]))
    assert cc.reason is Reason.INVALID_FIELD_IN_PARAMETER_LIST
