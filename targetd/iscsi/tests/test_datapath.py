"""The data path alone: residuals (RFC 7143 11.4.5), Data-In segmentation, Data-Out bursts."""

from __future__ import annotations

import pytest

from targetd.iscsi.datapath import Burst, data_in_pdus, residual, single_data_in
from targetd.iscsi.pdu import FLAG_OVERFLOW, FLAG_UNDERFLOW


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        # A read that produced what was expected, less, more, nothing.
        ({"read": True, "edtl": 4096, "data_in": 4096}, (0, 0, 4096)),
        ({"read": True, "edtl": 4096, "data_in": 512}, (FLAG_UNDERFLOW, 3584, 512)),
        ({"read": True, "edtl": 512, "data_in": 4096}, (FLAG_OVERFLOW, 3584, 512)),
        ({"read": True, "edtl": 512, "data_in": None}, (FLAG_UNDERFLOW, 512, 0)),
        ({"read": True, "edtl": 512, "data_in": None, "good": False}, (0, 0, 0)),
        # A write that consumed all, less, more than the initiator sent.
        ({"write": True, "edtl": 4096}, (0, 0, 0)),
        ({"write": True, "edtl": 4096, "data_out_used": 1024}, (FLAG_UNDERFLOW, 3072, 0)),
        ({"write": True, "edtl": 1024, "data_out_used": 4096}, (FLAG_OVERFLOW, 3072, 0)),
        # No data direction, and a command that answers data nobody asked for.
        ({"edtl": 0, "data_in": 36}, (FLAG_OVERFLOW, 36, 0)),
    ],
)
def test_residual(kwargs: dict, expected: tuple[int, int, int]) -> None:
    args = {"read": False, "write": False, "data_in": None, "data_out_used": None, "good": True}
    args.update(kwargs)
    assert residual(**args) == expected


def test_data_in_never_crosses_a_burst_and_marks_each_burst_end() -> None:
    data = memoryview(bytes(range(256)) * 40)  # 10240 bytes
    pdus = list(data_in_pdus(data, lun=bytes(8), itt=7, max_segment=3000, max_burst=4096))
    lengths = [len(seg) for _, seg, _ in pdus]
    assert lengths == [3000, 1096, 3000, 1096, 2048]
    assert [hdr[1] & 0x80 for hdr, _, _ in pdus] == [0, 0x80, 0, 0x80, 0x80]
    assert [last for _, _, last in pdus] == [False] * 4 + [True]
    assert [int.from_bytes(h[36:40], "big") for h, _, _ in pdus] == [0, 1, 2, 3, 4]
    assert [int.from_bytes(h[40:44], "big") for h, _, _ in pdus] == [0, 3000, 4096, 7096, 8192]
    assert b"".join(bytes(seg) for _, seg, _ in pdus) == bytes(data)


def test_a_burst_takes_only_the_data_that_continues_it() -> None:
    burst = Burst(0, 8192)
    assert burst.takes(0, 4096) and not burst.takes(512, 512) and not burst.takes(0, 8193)
    burst.offset = 8192
    assert burst.done


@pytest.mark.parametrize("length", [1, 512, 4096, 8192])
def test_single_data_in_is_the_one_pdu_data_in_pdus_gives(length: int) -> None:
    data = memoryview(bytes(length))
    lun = bytes([0, 3]) + bytes(6)
    ((expected, segment, last),) = data_in_pdus(
        data, lun=lun, itt=0x1234, max_segment=8192, max_burst=65536
    )
    assert last and len(segment) == length
    assert single_data_in(length, lun=lun, itt=0x1234) == expected
    # With the status collapsed in: S, U, GOOD and the residual count, nothing else changes.
    collapsed = single_data_in(length, lun=lun, itt=0x1234, flags=0x83, status=0, residual=7)
    expected[1] |= 0x03
    expected[44:48] = (7).to_bytes(4, "big")
    assert collapsed == expected
