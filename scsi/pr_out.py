"""PERSISTENT RESERVE OUT (SPC-4 6.16) and RESERVE/RELEASE (6)/(10) (SPC-2): the commands
that change a LU's :class:`~scsi.reservations.ReservationState`, registered in
``scsi.spc.SPC_TABLE``. Each PERSISTENT RESERVE OUT service action runs under
:func:`scsi.pr_keep.durable`: decided on the store's latest state and kept there before it
is answered; RESERVE and RELEASE go through the same :func:`~scsi.pr_keep.keep` where gateways
share the LU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from scsi.command import Nexus, ScsiCommand, ScsiResult
from scsi.pr_keep import CONFLICT, durable, keep
from scsi.reservations import (
    RESERVE_10,
    PrType,
    Reservation,
    ReservationState,
    registrant_for,
)
from scsi.sense import CheckCondition, FieldPointer, Reason
from scsi.transport_id import TransportId, parse_list

if TYPE_CHECKING:
    from scsi.logical_unit import LogicalUnit


SPEC_I_PT, ALL_TG_PT, APTPL = 0x08, 0x04, 0x01
BASIC_LENGTH = 24


@dataclass(frozen=True, slots=True)
class ProutParameters:
    key: int
    sa_key: int
    aptpl: bool = False
    all_tg_pt: bool = False
    transport_ids: tuple[TransportId, ...] | None = None  # SPEC_I_PT set: the list


def _parameters(lu: LogicalUnit, cmd: ScsiCommand, *, spec_i_pt: bool = False) -> ProutParameters:
    """The basic parameter list (SPC-4 6.16.3); ``spec_i_pt``: the service action takes
    SPEC_I_PT (REGISTER), so a list of TransportIDs may follow. ALL_TG_PT is read for
    every service action and ignored but by the REGISTERs, as SPC-4 says."""
    length = int.from_bytes(cmd.cdb[5:9], "big")
    data = bytes(cmd.data_out or b"")[:length]
    if length < BASIC_LENGTH or len(data) < BASIC_LENGTH:
        raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
    flags = data[20]
    if flags & SPEC_I_PT and not spec_i_pt:
        raise _invalid_parameter(20, 3)
    tids: tuple[TransportId, ...] | None = None
    if flags & SPEC_I_PT:
        if length < BASIC_LENGTH + 4 or len(data) < length:
            raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
        tpdl = int.from_bytes(data[24:28], "big")
        if BASIC_LENGTH + 4 + tpdl != length:
            raise _invalid_parameter(24)
        tids = tuple(parse_list(data, BASIC_LENGTH + 4, length))
    elif length != BASIC_LENGTH:
        raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
    aptpl = bool(flags & APTPL)
    if aptpl and not lu.reservations.persistent:  # PTPL_C 0: the LU cannot keep them
        raise _invalid_parameter(20, 0)
    return ProutParameters(
        int.from_bytes(data[0:8], "big"),
        int.from_bytes(data[8:16], "big"),
        aptpl,
        bool(flags & ALL_TG_PT),
        tids,
    )


def _type(cmd: ScsiCommand) -> PrType:
    if cmd.cdb[2] & 0xF0:  # scope other than LU_SCOPE
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2, bit=7))
    try:
        return PrType(cmd.cdb[2] & 0x0F)
    except ValueError:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2, bit=3)) from None


def _named(tid: TransportId, sender: Nexus, all_tg_pt: bool) -> Nexus:
    """The registrant a SPEC_I_PT TransportID names: that initiator port (or, without an
    ISID, every port of that initiator) through the sender's target port, or all of them."""
    port = tid.port
    if all_tg_pt:
        return Nexus(port, "", 0, tid.name)
    return Nexus(port, sender.target_port, sender.relative_target_port, tid.name)


def _register(lu: LogicalUnit, cmd: ScsiCommand, ignore_existing: bool) -> ScsiResult:
    params = _parameters(lu, cmd, spec_i_pt=not ignore_existing)
    state, nexus = lu.reservations, cmd.nexus
    registrant = state.registrant(nexus)
    current = None if registrant is None else state.keys[registrant]
    if not ignore_existing and params.key != (current or 0):
        return CONFLICT
    if registrant is None:
        if params.sa_key == 0:
            return ScsiResult()
        mine = registrant_for(nexus, all_target_ports=params.all_tg_pt)
        added = {mine: params.sa_key}
        for tid in params.transport_ids or ():
            named = _named(tid, nexus, params.all_tg_pt)
            # A port already registered keeps its registration (and key).
            if state.registrant(named) is None and not any(state.covers(r, named) for r in added):
                added[named] = params.sa_key
        state.keys.update(added)
    elif params.transport_ids is not None:
        raise _invalid_parameter(20, 3)  # SPEC_I_PT from a registered I_T nexus
    elif params.sa_key == 0:
        state.unregister(registrant, nexus)
    else:
        state.keys[registrant] = params.sa_key
    state.generation += 1
    state.aptpl = params.aptpl  # the most recent REGISTER decides (SPC-4 5.13.5)
    return ScsiResult()


def _registrant(lu: LogicalUnit, cmd: ScsiCommand) -> ProutParameters | None:
    """The parameter list of a service action only a registrant may send: None (answer
    RESERVATION CONFLICT) when the I_T nexus is not registered with the key it gives."""
    params = _parameters(lu, cmd)
    return params if lu.reservations.key_of(cmd.nexus) == params.key else None


@durable
async def register(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return _register(lu, cmd, ignore_existing=False)


@durable
async def register_and_ignore(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return _register(lu, cmd, ignore_existing=True)


@durable
async def reserve(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    params, pr_type = _registrant(lu, cmd), _type(cmd)
    if params is None:
        return CONFLICT
    state = lu.reservations
    if state.reservation is None:
        registrant = state.registrant(cmd.nexus)
        assert registrant is not None
        state.reservation = Reservation(registrant, pr_type)
        return ScsiResult()
    if state.is_holder(cmd.nexus) and state.reservation.type == pr_type:
        return ScsiResult()
    return CONFLICT


@durable
async def release(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    if _registrant(lu, cmd) is None:
        return CONFLICT
    state = lu.reservations
    res = state.reservation
    if res is None or not state.is_holder(cmd.nexus):
        return ScsiResult()
    if _type(cmd) != res.type:
        raise CheckCondition(Reason.INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
    state.release()
    if res.type.registrants_only or res.type.all_registrants:
        state.notify(Reason.RESERVATIONS_RELEASED, sender=cmd.nexus)
    return ScsiResult()


@durable
async def clear(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    if _registrant(lu, cmd) is None:
        return CONFLICT
    state = lu.reservations
    state.notify(Reason.RESERVATIONS_PREEMPTED, sender=cmd.nexus)
    state.keys.clear()
    state.release()
    state.generation += 1
    return ScsiResult()


def _remove_registrations(state: ReservationState, sender: Nexus, victims: list[Nexus]) -> None:
    for registrant in victims:
        del state.keys[registrant]
        state.owe(registrant, Reason.REGISTRATIONS_PREEMPTED, sender)


PREEMPT_AND_ABORT = 0x05


@durable
async def preempt(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """PREEMPT, and PREEMPT AND ABORT: the latter also ends the commands the preempted
    nexuses have on this LU, before it completes (SPC-4 5.13.11.2.6)."""
    params, pr_type = _registrant(lu, cmd), _type(cmd)
    if params is None:
        return CONFLICT
    state = lu.reservations
    mine = state.registrant(cmd.nexus)
    assert mine is not None
    res = state.reservation
    holder_key = None if res is None or res.type.all_registrants else state.keys.get(res.holder)
    victims: list[Nexus] = []
    if res is not None and res.type.all_registrants and params.sa_key == 0:
        victims = [r for r in state.keys if r != mine]
        _remove_registrations(state, cmd.nexus, victims)
        state.reservation = Reservation(mine, pr_type)
    elif res is not None and holder_key == params.sa_key:
        victims = [r for r, k in state.keys.items() if k == params.sa_key and r != mine]
        _remove_registrations(state, cmd.nexus, victims)
        state.reservation = Reservation(mine, pr_type)
        if res.type != pr_type:
            state.notify(Reason.RESERVATIONS_RELEASED, sender=cmd.nexus)
    else:
        if params.sa_key == 0:
            raise _invalid_parameter(8)
        victims = [r for r, k in state.keys.items() if k == params.sa_key and r != mine]
        _remove_registrations(state, cmd.nexus, victims)
        if not victims and state.keys.get(mine) != params.sa_key:
            return CONFLICT
    state.generation += 1
    if cmd.cdb[1] & 0x1F == PREEMPT_AND_ABORT:
        state.aborts.extend(victims)
    return ScsiResult()


# -- REGISTER AND MOVE ------------------------------------------------------------------------
def _invalid_parameter(byte: int, bit: int | None = None) -> CheckCondition:
    return CheckCondition(
        Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(byte, bit=bit, in_cdb=False)
    )


def _move_destination(lu: LogicalUnit, sender: Nexus, data: bytes) -> Nexus:
    """The I_T nexus REGISTER AND MOVE names: an iSCSI TransportID (SPC-4 7.6.4.6) and a
    relative target port. Format 01b (name and ISID) names one initiator port; format 00b
    (name only) names the one logged-in port of that initiator through that target port."""
    port = int.from_bytes(data[18:20], "big")
    length = int.from_bytes(data[20:24], "big")
    tid = data[24 : 24 + length]
    if len(tid) < 4 or len(tid) != length or tid[0] & 0x0F != 0x05:
        raise _invalid_parameter(24)
    text = (
        tid[4 : 4 + int.from_bytes(tid[2:4], "big")].split(b"\0", 1)[0].decode("utf-8", "replace")
    )
    target_name, _, _ = sender.target_port.partition(",t,0x")
    target_port = f"{target_name},t,0x{port:04x}"
    if tid[0] >> 6 == 0b01:  # "iqn...,i,0x<ISID>"
        name, sep, isid = text.partition(",i,0x")
        if not sep or not isid:
            raise _invalid_parameter(24)
        destination = Nexus(f"{name},i,0x{isid.lower()}", target_port, port, name)
        known = [n for n in lu.known_nexuses() | set(lu.reservations.keys)
                 if n.initiator_port.lower() == destination.initiator_port
                 and n.relative_target_port == port]  # fmt: skip
        return known[0] if known else destination
    if tid[0] >> 6 != 0:
        raise _invalid_parameter(24, 7)
    matches = [n for n in lu.known_nexuses() | set(lu.reservations.keys)
               if (n.initiator_name or n.initiator_port.split(",")[0]) == text
               and n.relative_target_port == port]  # fmt: skip
    if len(matches) != 1:  # no such port logged in, or several: name one with its ISID
        raise _invalid_parameter(24)
    return matches[0]


@durable
async def register_and_move(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """SPC-4 5.13.8: the holder moves its reservation to another I_T nexus, registering
    that nexus with the service action key, and (UNREG) drops its own registration."""
    if cmd.cdb[2] & 0xF0:  # scope other than LU_SCOPE
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2, bit=7))
    length = int.from_bytes(cmd.cdb[5:9], "big")
    data = bytes(cmd.data_out or b"")[:length]
    if length < 24 or len(data) < length:
        raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
    key, sa_key = int.from_bytes(data[0:8], "big"), int.from_bytes(data[8:16], "big")
    unreg, aptpl = bool(data[17] & 0x02), bool(data[17] & 0x01)
    state, sender = lu.reservations, cmd.nexus
    mine = state.registrant(sender)
    if mine is None or state.keys[mine] != key:
        return CONFLICT
    res = state.reservation
    if res is None or res.type.all_registrants or res.holder != mine:
        return CONFLICT
    if aptpl and not state.persistent:
        raise _invalid_parameter(17, 0)
    if sa_key == 0:
        raise _invalid_parameter(8)
    destination = _move_destination(lu, sender, data)
    # A destination already registered keeps its registrant, with the new key.
    destination = state.registrant(destination) or destination
    if destination == mine:
        raise _invalid_parameter(18)
    state.keys[destination] = sa_key
    state.reservation = Reservation(destination, res.type)
    if unreg:
        del state.keys[mine]
    state.aptpl = aptpl
    state.generation += 1
    return ScsiResult()


# -- RESERVE / RELEASE (6) and (10) ----------------------------------------------------------
# SPC-2 reservations are not persistent, but with gateways sharing the LU they must hold
# through every gateway: a shared store keeps them in its record, decided like a PROUT.
async def reserve_legacy(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    if cmd.opcode == RESERVE_10 and cmd.cdb[1] & 0x03:  # 3RDPTY, LONGID: not supported
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1))
    state = lu.reservations

    async def decide() -> ScsiResult:
        if state.reservation is not None:
            # CRH: a persistent reservation wins; its holder's RESERVE is a no-op.
            return ScsiResult() if state.is_holder(cmd.nexus) else CONFLICT
        if state.legacy not in (None, cmd.nexus):
            return CONFLICT
        state.legacy = cmd.nexus
        return ScsiResult()

    return await keep(lu, decide) if state.shared else await decide()


async def release_legacy(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    state = lu.reservations

    async def decide() -> ScsiResult:
        if state.legacy == cmd.nexus:
            state.legacy = None
        return ScsiResult()

    return await keep(lu, decide) if state.shared else await decide()
