"""PERSISTENT RESERVE OUT REGISTER with SPEC_I_PT (TransportIDs) and ALL_TG_PT, READ FULL
STATUS of such registrations, and the TransportID parser's field pointers."""

from __future__ import annotations

import pytest

from scsi.command import Nexus, Status
from scsi.reservations import PrType
from scsi.sense import CheckCondition, parse_sense
from scsi.tests.test_spc_reservations import READ, WRITE, A, B, make_lu, prin, run, ua
from scsi.transport_id import TransportId, parse_one

REGISTER, RESERVE, PREEMPT, REG_IGNORE = 0x00, 0x01, 0x04, 0x06
SPEC_I_PT, ALL_TG_PT = 0x08, 0x04
WE = PrType.WRITE_EXCLUSIVE
# A's initiator port through a second target port; D, a port of an initiator not logged in.
A2 = Nexus("iqn.a,i,0x1", "iqn.t,t,0x0002", 2, "iqn.a")
D1 = Nexus("iqn.d,i,0x400000000001", "iqn.t,t,0x1", 1, "iqn.d")
D2 = Nexus("iqn.d,i,0x400000000002", "iqn.t,t,0x1", 1, "iqn.d")
D_OTHER_PORT = Nexus("iqn.d,i,0x400000000001", "iqn.t,t,0x0002", 2, "iqn.d")


def prout_tids(lu, nexus, sa, *, key=0, sa_key=0, flags=SPEC_I_PT, tids=b"", tpdl=None,
               pr_type=0):  # fmt: skip
    params = key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes([0] * 4 + [flags, 0, 0, 0])
    if flags & SPEC_I_PT:
        params += (len(tids) if tpdl is None else tpdl).to_bytes(4, "big") + tids
    cdb = bytes([0x5F, sa, pr_type, 0, 0]) + len(params).to_bytes(4, "big") + b"\0"
    return run(lu, nexus, cdb, params)


def sense(result) -> tuple[int, int, int, bytes]:
    assert result.status == Status.CHECK_CONDITION
    return (*parse_sense(result.sense), bytes(result.sense[15:18]))


def keys(lu) -> list[int]:
    data = prin(lu, A, 0)
    return [int.from_bytes(data[i : i + 8], "big") for i in range(8, len(data), 8)]


def fresh():
    lu = make_lu()
    for nexus in (A2, D1, D2, D_OTHER_PORT):
        lu.nexus_established(nexus)
        lu.pop_unit_attention(nexus)
    return lu


def test_spec_i_pt_registers_the_named_ports_through_the_sender_s_target_port() -> None:
    lu = fresh()
    tids = TransportId("iqn.b", "1").encode() + TransportId("iqn.d").encode()
    assert prout_tids(lu, A, REGISTER, sa_key=0x77, tids=tids).status == Status.GOOD
    assert keys(lu) == [0x77, 0x77, 0x77]
    state = lu.reservations
    # B by its port; every port of iqn.d through target port 1, not through port 2.
    assert state.key_of(B) == state.key_of(D1) == state.key_of(D2) == 0x77
    assert state.key_of(D_OTHER_PORT) is None and state.key_of(A2) is None
    # A registered port may reserve with the key it was given.
    assert prout_tids(lu, D2, RESERVE, key=0x77, flags=0, pr_type=WE).status == Status.GOOD
    # The registration (and so the reservation) is the device's: each of its ports holds it.
    assert run(lu, D1, WRITE).status == Status.GOOD
    assert run(lu, B, WRITE).status == Status.RESERVATION_CONFLICT
    assert run(lu, D_OTHER_PORT, WRITE).status == Status.RESERVATION_CONFLICT
    assert run(lu, D_OTHER_PORT, READ).status == Status.GOOD


def test_spec_i_pt_with_all_tg_pt_covers_every_target_port() -> None:
    lu = fresh()
    tid = TransportId("iqn.d", "400000000001").encode()
    answer = prout_tids(lu, A, REGISTER, sa_key=0x5, flags=SPEC_I_PT | ALL_TG_PT, tids=tid)
    assert answer.status == Status.GOOD
    state = lu.reservations
    assert state.key_of(D1) == state.key_of(D_OTHER_PORT) == state.key_of(A2) == 0x5
    assert state.key_of(D2) is None


def test_a_named_port_already_registered_keeps_its_key() -> None:
    lu = fresh()
    assert prout_tids(lu, B, REGISTER, sa_key=0xB, flags=0).status == Status.GOOD
    tids = TransportId("iqn.b", "1").encode()
    assert prout_tids(lu, A, REGISTER, sa_key=0xA, tids=tids).status == Status.GOOD
    assert lu.reservations.key_of(B) == 0xB and lu.reservations.key_of(A) == 0xA


def test_all_tg_pt_registration_holds_the_reservation_through_every_port() -> None:
    lu = fresh()
    assert prout_tids(lu, A, REGISTER, sa_key=0xA, flags=ALL_TG_PT).status == Status.GOOD
    assert prout_tids(lu, A2, RESERVE, key=0xA, flags=0, pr_type=WE).status == Status.GOOD
    assert run(lu, A, WRITE).status == Status.GOOD  # the same registration, another port
    assert run(lu, B, WRITE).status == Status.RESERVATION_CONFLICT
    data = prin(lu, B, 3)
    assert int.from_bytes(data[4:8], "big") == 24 + len(TransportId("iqn.a", "1").encode())
    descriptor = data[8:]
    assert descriptor[:8] == (0xA).to_bytes(8, "big")
    assert descriptor[12] == 0x03 and descriptor[13] == WE  # ALL_TG_PT, R_HOLDER
    assert descriptor[18:20] == bytes(2)  # no one relative target port
    assert descriptor[24:] == TransportId("iqn.a", "1").encode()
    assert descriptor[24] == 0x45  # format 01b, iSCSI
    # Unregistering through either port drops it (and the reservation it held).
    assert prout_tids(lu, A, REGISTER, key=0xA, flags=0).status == Status.GOOD
    assert keys(lu) == [] and run(lu, B, WRITE).status == Status.GOOD


def test_preempting_an_all_tg_pt_registration_tells_each_of_its_nexuses() -> None:
    lu = fresh()
    assert prout_tids(lu, A, REGISTER, sa_key=0xA, flags=ALL_TG_PT).status == Status.GOOD
    assert prout_tids(lu, B, REGISTER, sa_key=0xB, flags=0).status == Status.GOOD
    assert prout_tids(lu, A, RESERVE, key=0xA, flags=0, pr_type=WE).status == Status.GOOD
    answer = prout_tids(lu, B, PREEMPT, key=0xB, sa_key=0xA, flags=0, pr_type=WE)
    assert answer.status == Status.GOOD
    assert ua(lu, A) == ua(lu, A2) == (6, 0x2A, 0x05)
    assert run(lu, A2, WRITE).status == Status.RESERVATION_CONFLICT


def test_read_full_status_of_a_device_registration_has_a_format_00b_transport_id() -> None:
    lu = fresh()
    tids = TransportId("iqn.d").encode()
    assert prout_tids(lu, A, REGISTER, sa_key=0x9, tids=tids).status == Status.GOOD
    data = prin(lu, B, 3)
    second = data[8 + 24 + int.from_bytes(data[8 + 20 : 8 + 24], "big") :]
    assert second[12] == 0 and second[18:20] == (1).to_bytes(2, "big")
    assert second[24:] == TransportId("iqn.d").encode() and second[24] == 0x05


ISCSI_D = TransportId("iqn.d", "400000000001").encode()


@pytest.mark.parametrize(
    ("tids", "tpdl", "pointer"),
    [
        (bytes([0x04]) + ISCSI_D[1:], None, bytes([0x8B, 0, 28])),  # protocol: not iSCSI
        (bytes([0x85]) + ISCSI_D[1:], None, bytes([0x8F, 0, 28])),  # format 10b
        (ISCSI_D[:3] + bytes([ISCSI_D[3] - 1]) + ISCSI_D[4:-1], None, bytes([0x80, 0, 30])),
        (ISCSI_D[:4] + b"x" * (len(ISCSI_D) - 4), None, bytes([0x80, 0, 32])),  # no NUL
        (TransportId("iqn.d").encode()[:1].replace(b"\x05", b"\x45")
         + TransportId("iqn.d").encode()[1:], None, bytes([0x80, 0, 32])),  # 01b, no ISID
        (ISCSI_D[:1].replace(b"\x45", b"\x05") + ISCSI_D[1:], None, bytes([0x8F, 0, 28])),
        (ISCSI_D, len(ISCSI_D) + 4, bytes([0x80, 0, 24])),  # list length is not the data's
        (ISCSI_D + bytes(4), None, bytes([0x8B, 0, 28 + len(ISCSI_D)])),  # a stub
        (ISCSI_D.replace(b"iqn.d", b"xyz.d"), None, bytes([0x80, 0, 32])),  # not an iSCSI name
    ],
)  # fmt: skip
def test_bad_transport_ids_point_at_their_field_and_register_nothing(
    tids: bytes, tpdl: int | None, pointer: bytes
) -> None:
    lu = fresh()
    answer = prout_tids(lu, A, REGISTER, sa_key=0x5, tids=tids, tpdl=tpdl)
    assert sense(answer) == (5, 0x26, 0, pointer)
    assert keys(lu) == [] and lu.reservations.key_of(A) is None


def test_spec_i_pt_is_refused_where_spc_4_allows_it_not() -> None:
    lu = fresh()
    tid = TransportId("iqn.b", "1").encode()
    # REGISTER AND IGNORE EXISTING KEY takes no TransportIDs.
    assert sense(prout_tids(lu, A, REG_IGNORE, sa_key=1, tids=tid)) == (
        5, 0x26, 0, bytes([0x8B, 0, 20]))  # fmt: skip
    # Nor does a REGISTER from an I_T nexus already registered.
    assert prout_tids(lu, A, REGISTER, sa_key=1, flags=0).status == Status.GOOD
    assert sense(prout_tids(lu, A, REGISTER, key=1, sa_key=2, tids=tid)) == (
        5, 0x26, 0, bytes([0x8B, 0, 20]))  # fmt: skip
    assert keys(lu) == [1]
    # Nor RESERVE.
    answer = prout_tids(lu, A, RESERVE, key=1, tids=tid, pr_type=WE)
    assert sense(answer) == (5, 0x26, 0, bytes([0x8B, 0, 20]))
    # A list too short for its own length field.
    cdb = bytes([0x5F, REGISTER, 0, 0, 0, 0, 0, 0, 26, 0])
    params = bytes(8) + (3).to_bytes(8, "big") + bytes([0, 0, 0, 0, SPEC_I_PT, 0, 0, 0, 0, 0])
    assert parse_sense(run(lu, B, cdb, params).sense) == (5, 0x1A, 0)


def test_all_tg_pt_is_ignored_by_service_actions_other_than_register() -> None:
    lu = fresh()
    assert prout_tids(lu, A, REGISTER, sa_key=1, flags=0).status == Status.GOOD
    answer = prout_tids(lu, A, RESERVE, key=1, flags=ALL_TG_PT, pr_type=WE)
    assert answer.status == Status.GOOD
    assert run(lu, A2, WRITE).status == Status.RESERVATION_CONFLICT  # A's port 1 only


def test_transport_id_round_trip_and_case() -> None:
    tid = TransportId("iqn.2026-11.org.x:y", "400000000001")
    encoded = tid.encode()
    assert encoded[0] == 0x45 and int.from_bytes(encoded[2:4], "big") % 4 == 0
    assert parse_one(encoded, 0, len(encoded)) == (tid, len(encoded))
    upper = TransportId("IQN.2026-11.ORG.X:Y", "400000000001").encode()
    assert parse_one(upper, 0, len(upper))[0] == tid  # iSCSI names compare in lower case
    with pytest.raises(CheckCondition):
        parse_one(encoded, 0, len(encoded) - 4)
