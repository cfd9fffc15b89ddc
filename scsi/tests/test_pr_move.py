"""PERSISTENT RESERVE OUT / REGISTER AND MOVE (SPC-4 5.13.8) and PREEMPT AND ABORT."""

from __future__ import annotations

from scsi.command import Nexus, Status
from scsi.reservations import PrType
from scsi.sense import parse_sense
from scsi.tests.test_spc_reservations import WRITE, A, B, make_lu, prin, prout, run

REGISTER, RESERVE, MOVE = 0x00, 0x01, 0x07
WE = PrType.WRITE_EXCLUSIVE


def tid(text: str, isid_format: bool = False) -> bytes:
    name = text.encode() + b"\0"
    name += bytes(-len(name) % 4)
    return bytes([0x45 if isid_format else 0x05, 0]) + len(name).to_bytes(2, "big") + name


def move(lu, nexus, key, sa_key, transport_id, port=1, unreg=False, pr_type=WE):
    params = key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes([0, 0x02 if unreg else 0])
    params += port.to_bytes(2, "big") + len(transport_id).to_bytes(4, "big") + transport_id
    cdb = bytes([0x5F, MOVE, pr_type, 0, 0]) + len(params).to_bytes(4, "big") + b"\0"
    return run(lu, nexus, cdb, params)


def holder_lu():
    lu = make_lu()
    assert prout(lu, A, REGISTER, sa_key=0xA).status == Status.GOOD
    assert prout(lu, A, RESERVE, key=0xA, pr_type=WE).status == Status.GOOD
    return lu


def sense(result) -> tuple[int, int, int, bytes]:
    assert result.status == Status.CHECK_CONDITION
    return (*parse_sense(result.sense), result.sense[15:18])


def test_move_to_a_logged_in_initiator_by_name() -> None:
    lu = holder_lu()
    assert move(lu, A, 0xA, 0xB, tid("iqn.b")).status == Status.GOOD
    reservation = prin(lu, A, 1)
    assert reservation[8:16] == (0xB).to_bytes(8, "big") and reservation[21] == WE
    assert run(lu, B, WRITE).status == Status.GOOD
    assert run(lu, A, WRITE).status == Status.RESERVATION_CONFLICT  # still registered
    assert len(prin(lu, A, 0)) == 8 + 16
    assert int.from_bytes(prin(lu, A, 0)[:4], "big") == 2  # generation: A's REGISTER, the move


def test_unreg_drops_the_sender_s_registration() -> None:
    lu = holder_lu()
    assert move(lu, A, 0xA, 0xB, tid("iqn.b"), unreg=True).status == Status.GOOD
    assert prin(lu, A, 0)[8:] == (0xB).to_bytes(8, "big")


def test_move_by_isid_to_a_port_not_logged_in_yet() -> None:
    lu = holder_lu()
    answer = move(lu, A, 0xA, 0xD, tid("iqn.d,i,0x400000001234", isid_format=True), port=2)
    assert answer.status == Status.GOOD
    later = Nexus("iqn.d,i,0x400000001234", "iqn.t,t,0x0002", 2, "iqn.d")
    lu.nexus_established(later)
    lu.pop_unit_attention(later)
    assert run(lu, later, WRITE).status == Status.GOOD
    assert run(lu, B, WRITE).status == Status.RESERVATION_CONFLICT


def test_only_the_holder_moves() -> None:
    lu = holder_lu()
    assert prout(lu, B, REGISTER, sa_key=0xB).status == Status.GOOD
    assert move(lu, B, 0xB, 0xC, tid("iqn.a")).status == Status.RESERVATION_CONFLICT
    assert move(lu, A, 0xBAD, 0xC, tid("iqn.b")).status == Status.RESERVATION_CONFLICT
    nothing = make_lu()
    prout(nothing, A, REGISTER, sa_key=0xA)
    assert move(nothing, A, 0xA, 0xB, tid("iqn.b")).status == Status.RESERVATION_CONFLICT


def test_all_registrants_reservation_cannot_move() -> None:
    lu = make_lu()
    prout(lu, A, REGISTER, sa_key=0xA)
    prout(lu, A, RESERVE, key=0xA, pr_type=PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS)
    assert move(lu, A, 0xA, 0xB, tid("iqn.b")).status == Status.RESERVATION_CONFLICT


def test_bad_parameters_point_at_their_field() -> None:
    lu = holder_lu()
    assert sense(move(lu, A, 0xA, 0, tid("iqn.b"))) == (5, 0x26, 0, bytes([0x80, 0, 8]))
    assert sense(move(lu, A, 0xA, 0xB, tid("iqn.a"))) == (5, 0x26, 0, bytes([0x80, 0, 18]))
    assert sense(move(lu, A, 0xA, 0xB, tid("iqn.nobody"))) == (5, 0x26, 0, bytes([0x80, 0, 24]))
    assert sense(move(lu, A, 0xA, 0xB, tid("iqn.b"), port=9)) == (5, 0x26, 0, bytes([0x80, 0, 24]))
    # Nothing moved.
    assert prin(lu, A, 1)[8:16] == (0xA).to_bytes(8, "big")


def test_preempt_and_abort_ends_the_preempted_nexuses_commands() -> None:
    aborted: list[frozenset[Nexus]] = []

    async def abort_tasks(nexuses: frozenset[Nexus]) -> None:
        aborted.append(nexuses)

    for action, expected in ((0x04, []), (0x05, [frozenset({B})])):
        lu = holder_lu()
        lu.abort_tasks = abort_tasks
        assert prout(lu, B, REGISTER, sa_key=0xB).status == Status.GOOD
        aborted.clear()
        assert prout(lu, A, action, key=0xA, sa_key=0xB, pr_type=WE).status == Status.GOOD
        assert aborted == expected
        assert prin(lu, A, 0)[8:] == (0xA).to_bytes(8, "big")
