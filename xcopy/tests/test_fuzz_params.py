"""Property-based bad EXTENDED COPY parameter lists (docs/design.md, the promises).

Valid LID1 and LID4 lists are flipped, extended, truncated and re-lengthed; random bytes
come too. The decoder returns a CopyList (or None for an empty list) or raises
CheckCondition with ILLEGAL REQUEST / COPY ABORTED sense: no other exception, ever.
"""

from __future__ import annotations

import os
import struct

from helpers_xcopy import cscd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xcopy_lists import lid1, lid4, seg_b2b, seg_b2s, seg_filemarks, seg_locate, seg_s2b, seg_space

from scsi.sense import CheckCondition, SenseKey, parse_sense
from xcopy.params import LID1, LID4, SEGMENT_LENGTHS, CopyList, decode

settings.register_profile(
    "fuzz-xcopy",
    max_examples=int(os.environ.get("TARGETD_FUZZ_EXAMPLES", "300")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz-xcopy")

NAA = bytes.fromhex("6001405" + "0" * 25)
SEGMENTS = [
    seg_b2b(0, 1, 8, 0, 0),
    seg_b2s(0, 1, 4096, 8, 0),
    seg_s2b(1, 0, 4096, 8, 0),
    seg_filemarks(1, 1),
    seg_space(1, 1, -1),
    seg_locate(1, 0),
    struct.pack(">BBHHHI8xQHH", 0x0A, 0, 0x1C, 0, 1, 100, 0, 0, 0) + bytes(0),  # bytes b2b
    struct.pack(">BBH2xHII", 0x04, 0, 0x0C, 1, 0, 4),  # inline to stream
    struct.pack(">BBH2xHB3x", 0xC0, 0, 0x08, 1, 1),  # split pair
]


def _valid_segments() -> None:
    for seg in SEGMENTS:
        assert len(seg) == 4 + SEGMENT_LENGTHS[seg[0]], seg.hex()


@st.composite
def valid_lists(draw: st.DrawFn) -> tuple[int, bytes]:
    sa = draw(st.sampled_from([LID1, LID4]))
    cscds = [
        cscd(None, designator=NAA, device_type=draw(st.sampled_from([0, 1])))
        for _ in range(draw(st.integers(0, 3)))
    ]
    segments = draw(st.lists(st.sampled_from(SEGMENTS), max_size=4))
    inline = draw(st.binary(max_size=16))
    build = lid1 if sa == LID1 else lid4
    usage = draw(st.sampled_from([0, 2, 3]))
    return sa, build(cscds, segments, list_id=draw(st.integers(0, 255)), usage=usage, inline=inline)


@st.composite
def mutated_lists(draw: st.DrawFn) -> tuple[int, bytes]:
    sa, raw = draw(valid_lists())
    data = bytearray(raw)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "length", "insert"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xC0, 0xE4, 0xFF]))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "extend":
            data += draw(st.binary(max_size=80))
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=40))
        elif op == "length":
            # The header's length words: CSCD list, segment list, inline data.
            spots = [(2, 2), (8, 4), (12, 4)] if sa == LID1 else [(42, 2), (44, 2), (46, 2), (2, 2)]
            at, size = draw(st.sampled_from(spots))
            value = draw(st.one_of(st.integers(0, 64), st.integers(0, (1 << (8 * size)) - 1)))
            if len(data) >= at + size:
                data[at : at + size] = value.to_bytes(size, "big")
    return draw(st.sampled_from([sa, sa, LID1, LID4])), bytes(data)


def _decodes_or_refuses(sa: int, data: bytes) -> None:
    try:
        result = decode(sa, data)
    except CheckCondition as cc:
        key, _, _ = parse_sense(cc.sense())
        assert key in (SenseKey.ILLEGAL_REQUEST, SenseKey.COPY_ABORTED), cc.reason
        return
    assert result is None if not data else isinstance(result, CopyList)


def test_seed_lists_decode() -> None:
    _valid_segments()
    for sa, build in ((LID1, lid1), (LID4, lid4)):
        copy = decode(sa, build([cscd(None, designator=NAA)] * 2, SEGMENTS, inline=bytes(8)))
        assert copy is not None
        assert [s.type_code for s in copy.segments] == [s[0] for s in SEGMENTS]


@FUZZ
@given(mutated_lists())
def test_mutated_lists(case: tuple[int, bytes]) -> None:
    _decodes_or_refuses(*case)


@FUZZ
@given(sa=st.sampled_from([LID1, LID4, 2, 0x1C]), data=st.binary(max_size=400))
def test_random_bytes(sa: int, data: bytes) -> None:
    _decodes_or_refuses(sa, data)


@FUZZ
@given(
    sa=st.sampled_from([LID1, LID4]),
    seg_type=st.integers(0, 255),
    seg_length=st.integers(0, 40),
    tail=st.binary(max_size=40),
)
def test_segment_descriptor_heads(sa: int, seg_type: int, seg_length: int, tail: bytes) -> None:
    """A last segment descriptor with any type and DESCRIPTOR LENGTH, right at the end."""
    seg = bytes([seg_type, 0]) + seg_length.to_bytes(2, "big") + tail[:seg_length]
    build = lid1 if sa == LID1 else lid4
    _decodes_or_refuses(sa, build([cscd(None, designator=NAA)], [seg]))


def test_short_segment_descriptor_at_the_end_of_the_list() -> None:
    """Found by the fuzz: a 4-byte segment descriptor (DESCRIPTOR LENGTH 0) ending the
    list made the decoder read an 8-byte head past the data (struct.error)."""
    for sa, build in ((LID1, lid1), (LID4, lid4)):
        for type_code in (0x02, 0x55):
            data = build([cscd(None, designator=NAA)], [bytes([type_code, 0, 0, 0])])
            try:
                decode(sa, data)
            except CheckCondition as cc:
                assert parse_sense(cc.sense())[0] == SenseKey.ILLEGAL_REQUEST
            else:
                raise AssertionError("a 4-byte segment descriptor was accepted")
