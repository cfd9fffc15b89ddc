"""ALUA: the port group table, what each state lets through, RTPG and its place in dispatch."""

from __future__ import annotations

import asyncio

import pytest

from scsi.alua import AccessState, PortGroup, PortGroups
from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import Identity, LogicalUnit
from scsi.sense import Reason, parse_sense
from scsi.spc import SPC_TABLE

A = Nexus("iqn.2024-01.org.example:host,i,0x1", "iqn.2024-01.org.example:tgt,t,0x1", 1)
B = Nexus("iqn.2024-01.org.example:host,i,0x1", "iqn.2024-01.org.example:tgt,t,0x2", 2)

TUR = bytes(6)
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
MODE_SENSE6 = bytes([0x1A, 0, 0x3F, 0, 255, 0])
PRIN_READ_KEYS = bytes([0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0])
READ_CAPACITY16 = bytes([0x9E, 0x10]) + bytes(8) + bytes([0, 0, 0, 32, 0, 0])
WRITE10 = bytes([0x2A]) + bytes(9)


def rtpg(extended: bool = False, alloc: int = 1024) -> bytes:
    return (
        bytes([0xA3, 0x0A | (0x20 if extended else 0), 0, 0, 0, 0])
        + alloc.to_bytes(4, "big")
        + bytes(2)
    )


class SpcUnit(LogicalUnit):
    table = SPC_TABLE


def make_lu(state_b: AccessState = AccessState.STANDBY) -> SpcUnit:
    lu = SpcUnit(Identity("iqn.2024-01.org.example:tgt/lun0"))
    lu.port_groups = PortGroups(
        [
            PortGroup(1, AccessState.ACTIVE_OPTIMIZED, (1,), preferred=True),
            PortGroup(2, state_b, (2,)),
        ]
    )
    return lu


def run(lu: LogicalUnit, cdb: bytes, nexus: Nexus) -> ScsiResult:
    return asyncio.run(lu.execute(ScsiCommand(cdb, 0, nexus)))


def sense_of(result: ScsiResult) -> tuple[int, int, int]:
    assert result.status == Status.CHECK_CONDITION and result.sense is not None
    return parse_sense(result.sense)


@pytest.mark.parametrize(
    "state, ascq",
    [
        (AccessState.STANDBY, 0x0B),
        (AccessState.UNAVAILABLE, 0x0C),
        (AccessState.TRANSITIONING, 0x0A),
    ],
)
def test_media_access_refused_with_the_state_s_not_ready(state: AccessState, ascq: int) -> None:
    groups = PortGroups([PortGroup(1, ports=(1,)), PortGroup(2, state, (2,))])
    assert groups.refusal(2, TUR) == groups.refusal(2, WRITE10)
    assert groups.refusal(2, WRITE10) is not None
    assert groups.refusal(2, WRITE10).value == (2, 0x04, ascq)  # type: ignore[union-attr]
    assert groups.refusal(1, WRITE10) is None
    for allowed in (INQUIRY, rtpg(), bytes([0x03, 0, 0, 0, 18, 0]), bytes([0xA0]) + bytes(11)):
        assert groups.refusal(2, allowed) is None


@pytest.mark.parametrize(
    "cdb, standby, unavailable",
    [
        (MODE_SENSE6, None, Reason.LU_NOT_ACCESSIBLE_UNAVAILABLE),
        (PRIN_READ_KEYS, None, Reason.LU_NOT_ACCESSIBLE_UNAVAILABLE),
        (READ_CAPACITY16, None, Reason.LU_NOT_ACCESSIBLE_UNAVAILABLE),
        # SERVICE ACTION IN(16) other than READ CAPACITY(16): GET LBA STATUS is media access.
        (bytes([0x9E, 0x12]) + bytes(14), Reason.LU_NOT_ACCESSIBLE_STANDBY,
         Reason.LU_NOT_ACCESSIBLE_UNAVAILABLE),
        (TUR, Reason.LU_NOT_ACCESSIBLE_STANDBY, Reason.LU_NOT_ACCESSIBLE_UNAVAILABLE),
    ],
)  # fmt: skip
def test_standby_serves_more_than_unavailable(
    cdb: bytes, standby: Reason | None, unavailable: Reason
) -> None:
    standby_groups = PortGroups([PortGroup(1, AccessState.STANDBY, (1,))])
    unavailable_groups = PortGroups([PortGroup(1, AccessState.UNAVAILABLE, (1,))])
    assert standby_groups.refusal(1, cdb) == standby
    assert unavailable_groups.refusal(1, cdb) == unavailable


def test_active_non_optimized_serves_everything() -> None:
    groups = PortGroups([PortGroup(1, AccessState.ACTIVE_NON_OPTIMIZED, (1,))])
    assert groups.refusal(1, WRITE10) is None and groups.refusal(1, TUR) is None


def test_unknown_port_counts_as_first_group() -> None:
    groups = PortGroups([PortGroup(7, AccessState.STANDBY, (1,)), PortGroup(8, ports=(2,))])
    assert groups.group_of(9).id == 7
    assert groups.refusal(9, TUR) == Reason.LU_NOT_ACCESSIBLE_STANDBY


def test_update_says_whether_a_port_s_state_changed() -> None:
    groups = PortGroups([PortGroup(1, ports=(1,)), PortGroup(2, AccessState.STANDBY, (2,))])
    same = [PortGroup(1, ports=(1,)), PortGroup(2, AccessState.STANDBY, (2,), preferred=True)]
    assert groups.update(same) is False
    flipped = [PortGroup(1, AccessState.STANDBY, (1,)), PortGroup(2, ports=(2,))]
    assert groups.update(flipped) is True
    assert groups.group_of(1).state == AccessState.STANDBY
    with pytest.raises(ValueError):
        groups.update([])


def test_dispatch_standby_port_not_ready_active_port_good() -> None:
    lu = make_lu()
    assert sense_of(run(lu, TUR, B)) == (2, 0x04, 0x0B)
    assert run(lu, TUR, A).status == Status.GOOD
    assert run(lu, MODE_SENSE6, B).status == Status.GOOD
    assert run(lu, INQUIRY, B).status == Status.GOOD


def test_unit_attention_comes_before_not_ready() -> None:
    lu = make_lu()
    lu.nexus_established(B)
    assert sense_of(run(lu, TUR, B)) == (6, 0x29, 0x00)
    assert sense_of(run(lu, TUR, B)) == (2, 0x04, 0x0B)


def test_admit_refuses_copy_work_through_a_standby_port() -> None:
    lu = make_lu()
    refused = lu.admit(B, 0x88)
    assert refused is not None and sense_of(refused) == (2, 0x04, 0x0B)
    assert lu.admit(A, 0x88) is None


def test_report_target_port_groups_length_header() -> None:
    data = bytes(run(make_lu(), rtpg(), B).data)
    one = bytes([0x80, 0x8F, 0, 1, 0, 0x02, 0, 1, 0, 0, 0, 1])
    two = bytes([0x02, 0x8F, 0, 2, 0, 0x02, 0, 1, 0, 0, 0, 2])
    assert data == (24).to_bytes(4, "big") + one + two


def test_report_target_port_groups_extended_header_and_truncation() -> None:
    data = bytes(run(make_lu(AccessState.TRANSITIONING), rtpg(extended=True), B).data)
    assert data[:8] == bytes([0, 0, 0, 28, 0x10, 0, 0, 0])
    assert data[8 + 12] == 0x0F  # group 2: transitioning
    assert bytes(run(make_lu(), rtpg(alloc=6), A).data) == bytes([0, 0, 0, 24, 0x80, 0x8F])


def test_report_target_port_groups_bad_format_points_at_byte_1() -> None:
    cdb = bytearray(rtpg())
    cdb[1] |= 0x40  # format 010b
    result = run(make_lu(), bytes(cdb), A)
    assert sense_of(result) == (5, 0x24, 0x00)
    assert result.sense is not None and result.sense[15:18] == bytes([0xCF, 0, 1])


def test_rsoc_lists_report_target_port_groups() -> None:
    cdb = bytes([0xA3, 0x0C, 0x02, 0xA3, 0x00, 0x0A, 0, 0, 1, 0, 0, 0])
    data = bytes(run(make_lu(), cdb, A).data)
    assert data == bytes([0, 0x03, 0, 12, 0xA3, 0xEA, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 7])


def test_a_port_s_state_changed_by_update_is_enforced_on_the_next_command() -> None:
    # The LU skips the per-command check while every group is active: an update that makes
    # one restrictive must be seen, and one that makes them all active again too.
    lu = SpcUnit(Identity("iqn.2024-01.org.example:tgt/lun0"))
    lu.port_groups = PortGroups([PortGroup(1, ports=(1,)), PortGroup(2, ports=(2,))])
    assert run(lu, TUR, B).status == Status.GOOD
    lu.port_groups.update([PortGroup(1, ports=(1,)), PortGroup(2, AccessState.UNAVAILABLE, (2,))])
    assert sense_of(run(lu, TUR, B)) == (2, 0x04, 0x0C)
    assert run(lu, TUR, A).status == Status.GOOD
    lu.port_groups.update([PortGroup(1, ports=(1,)), PortGroup(2, ports=(2,))])
    assert run(lu, TUR, B).status == Status.GOOD
