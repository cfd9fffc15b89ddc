"""PERSISTENT RESERVE IN (SPC-4 6.15): READ KEYS, READ RESERVATION, REPORT CAPABILITIES
and READ FULL STATUS, answered from the LU's :class:`~scsi.reservations.ReservationState`.

Where the state is shared with other gateways (an RBD LU's store in the cluster), each
answer is preceded by a refresh from the store, so it shows what another gateway changed
a moment ago; elsewhere the state in memory is the state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scsi.command import Nexus, ScsiCommand, ScsiResult
from scsi.pr_keep import current
from scsi.reservations import (
    Reservation,
    ReservationState,
    all_target_ports,
    has_isid,
    initiator_name,
)
from scsi.transport_id import TransportId

if TYPE_CHECKING:
    from scsi.logical_unit import LogicalUnit


def _allocation(cmd: ScsiCommand) -> int:
    return int.from_bytes(cmd.cdb[7:9], "big")


def _header(state: ReservationState, body: bytes) -> bytes:
    return state.generation.to_bytes(4, "big") + len(body).to_bytes(4, "big") + body


@current
async def read_keys(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    state = lu.reservations
    body = b"".join(key.to_bytes(8, "big") for key in state.keys.values())
    return ScsiResult(data=_header(state, body)[: _allocation(cmd)])


def _reservation_key(state: ReservationState, res: Reservation) -> int:
    return 0 if res.type.all_registrants else state.keys.get(res.holder, 0)


@current
async def read_reservation(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    state = lu.reservations
    res = state.reservation
    body = b""
    if res is not None:
        body = _reservation_key(state, res).to_bytes(8, "big") + bytes([0] * 5 + [res.type, 0, 0])
    return ScsiResult(data=_header(state, body)[: _allocation(cmd)])


@current
async def report_capabilities(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    data = bytearray(8)
    data[1] = 8
    state = lu.reservations
    # CRH: RESERVE(6) meets a persistent reservation with a conflict; SIP_C: SPEC_I_PT;
    # ATP_C: ALL_TG_PT; PTPL_C: APTPL served.
    data[2] = (
        0x10 | 0x08 | 0x04 | (0x01 if state.store is not None and state.store.persistent else 0)
    )
    # TMV: the type mask is valid; ALLOW COMMANDS 000b; PTPL_A: APTPL is on.
    data[3] = 0x80 | (0x01 if state.aptpl else 0)
    data[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02  # WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
    data[5] = 0x01  # EX_AC_AR
    return ScsiResult(data=bytes(data)[: _allocation(cmd)])


def _transport_id(registrant: Nexus) -> bytes:
    name = initiator_name(registrant)
    isid = registrant.initiator_port.partition(",i,0x")[2] if has_isid(registrant) else None
    return TransportId(name, isid).encode()


@current
async def read_full_status(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """One descriptor per registration: its key, R_HOLDER with the type, ALL_TG_PT or the
    relative target port, and the TransportID (format 01b with the ISID it was made with,
    00b for a registration of a whole initiator device)."""
    state = lu.reservations
    res = state.reservation
    descriptors = []
    for registrant, key in state.keys.items():
        holder = res is not None and (res.type.all_registrants or res.holder == registrant)
        every_port = all_target_ports(registrant)
        tid = _transport_id(registrant)
        descriptors.append(
            key.to_bytes(8, "big")
            + bytes(4)
            + bytes([(0x02 if every_port else 0) | (0x01 if holder else 0)])
            + bytes([res.type if holder and res else 0])
            + bytes(4)
            + (0 if every_port else registrant.relative_target_port).to_bytes(2, "big")
            + len(tid).to_bytes(4, "big")
            + tid
        )
    return ScsiResult(data=_header(state, b"".join(descriptors))[: _allocation(cmd)])
