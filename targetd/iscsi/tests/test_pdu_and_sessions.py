"""PDU layout helpers, serial-number arithmetic, and the session table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from targetd.iscsi.pdu import (
    BHS_LEN,
    Op,
    Pdu,
    data_segment_length,
    new_header,
    padded,
    put_u32,
    serial_le,
    serial_lt,
)
from targetd.iscsi.session import COMMAND_WINDOW, LoginRefusedError, SessionTable

u32 = st.integers(0, 0xFFFFFFFF)


@given(u32, st.integers(1, 0x7FFFFFFF))
def test_serial_lt_wraps_around(a: int, step: int) -> None:
    b = (a + step) & 0xFFFFFFFF
    assert serial_lt(a, b) and not serial_lt(b, a)
    assert serial_le(a, a) and not serial_lt(a, a)


def test_header_fields_land_at_rfc_offsets() -> None:
    hdr = new_header(
        Op.SCSI_RESPONSE, 0x80, itt=0x01020304, lun=bytes(range(8)), data_length=0x123456
    )
    put_u32(hdr, 24, 7)
    assert len(hdr) == BHS_LEN
    assert hdr[0] == 0x21 and hdr[1] == 0x80
    assert hdr[5:8] == bytes([0x12, 0x34, 0x56]) and data_segment_length(hdr) == 0x123456
    assert hdr[8:16] == bytes(range(8))
    assert hdr[16:20] == bytes([1, 2, 3, 4])
    pdu = Pdu(bytes(hdr))
    assert (pdu.opcode, pdu.final, pdu.itt, pdu.u32(24)) == (0x21, True, 0x01020304, 7)
    assert [padded(n) for n in (0, 1, 4, 5)] == [0, 4, 4, 8]


def bind(table: SessionTable, isid: bytes, tsih: int = 0, cid: int = 0) -> int:
    return table.bind(
        initiator_name="iqn.x:a",
        isid=isid,
        tsih=tsih,
        target_name="iqn.t:1",
        session_type="Normal",
        cid=cid,
    )


def test_same_isid_reinstates_the_old_session() -> None:
    table = SessionTable()
    gone = []
    table.on_reinstate = gone.append
    first = bind(table, b"\x40\0\0\0\0\1")
    old = table.get(first)
    second = bind(table, b"\x40\0\0\0\0\1")
    assert second != first and gone == [old] and table.get(first) is None
    assert len(table) == 1
    other = bind(table, b"\x40\0\0\0\0\2")  # another ISID: a second session of the initiator
    assert len(table) == 2 and other not in (first, second)


def test_unknown_tsih_and_extra_connections_are_refused() -> None:
    table = SessionTable(max_connections=1)
    with pytest.raises(LoginRefusedError) as err:
        bind(table, b"\x40\0\0\0\0\1", tsih=99)
    assert (err.value.status_class, err.value.status_detail) == (2, 0x0A)
    tsih = bind(table, b"\x40\0\0\0\0\1")
    session = table.get(tsih)
    assert session is not None
    session.connections.append(type("C", (), {"cid": 0})())
    with pytest.raises(LoginRefusedError) as err:
        bind(table, b"\x40\0\0\0\0\1", tsih=tsih, cid=1)
    assert (err.value.status_class, err.value.status_detail) == (2, 0x06)


def test_session_limit() -> None:
    table = SessionTable(max_sessions=1)
    bind(table, b"\x40\0\0\0\0\1")
    with pytest.raises(LoginRefusedError) as err:
        bind(table, b"\x40\0\0\0\0\2")
    assert err.value.status_class == 3


def test_cmdsn_window_sequencing() -> None:
    table = SessionTable()
    session = table.get(bind(table, b"\x40\0\0\0\0\1"))
    assert session is not None
    session.exp_cmdsn = 0xFFFFFFFE  # across the wrap
    order: list[int] = []
    assert session.sequence(0xFFFFFFFF, False, lambda: order.append(2))  # early: waits
    assert order == []
    assert session.sequence(0xFFFFFFFE, False, lambda: order.append(1))
    assert order == [1, 2] and session.exp_cmdsn == 0
    assert session.max_cmdsn == COMMAND_WINDOW - 1
    assert session.sequence(5, True, lambda: order.append(3))  # immediate: at once
    assert session.exp_cmdsn == 0
    assert not session.sequence(COMMAND_WINDOW + 5, False, lambda: order.append(4))
    assert not session.sequence(0xFFFFFFF0, False, lambda: order.append(5))  # stale
    assert order == [1, 2, 3]
