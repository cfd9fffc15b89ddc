"""Reservations: PERSISTENT RESERVE IN/OUT and RESERVE/RELEASE (6)/(10).

:class:`ReservationState` is one LU's reservation state, keyed by I_T nexus, and answers
the conflict question that ``LogicalUnit.execute`` asks before every handler
(SPC-4 5.13.1 and its table of commands allowed under each reservation type).
The handler functions at the bottom are registered in ``scsi.spc.SPC_TABLE``.

A registration belongs to a *registrant*: normally one I_T nexus, but REGISTER with
ALL_TG_PT registers an initiator port through every target port, and SPEC_I_PT may name an
initiator device (a TransportID without ISID), so a registrant is a :class:`Nexus` whose
target port (``""``, relative port 0) or ISID (``initiator_port`` = the bare name) is left
open. :meth:`ReservationState.registrant` finds the one that covers a nexus; the
reservation's holder is a registrant, so a reservation taken by an ALL_TG_PT registration
is held through each of its target ports.

A PERSISTENT RESERVE OUT does not queue unit attentions itself: it owes them
(:meth:`ReservationState.owe`) and they are delivered to the nexuses a registrant covers
once the change is kept, so a change that could not be kept raises none.

Where the state is kept beyond this process is the LU's :class:`PrStore`
(``ReservationState.store``, set by the daemon's builder): a file in the state directory
for APTPL (scsi/pr_file.py), or an object in the Ceph cluster that every gateway of an RBD
LU shares (scsi/pr_cluster.py). A state-changing PERSISTENT RESERVE OUT is kept there
before it is acknowledged; with a shared store each one first reads the latest state and
is decided again if another gateway changed it meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.sense import CheckCondition, FieldPointer, Reason
from scsi.transport_id import TransportId, parse_list

if TYPE_CHECKING:
    from scsi.logical_unit import LogicalUnit

log = logging.getLogger(__name__)


class PrType(IntEnum):
    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 8

    @property
    def all_registrants(self) -> bool:
        return self in (
            PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
            PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
        )

    @property
    def registrants_only(self) -> bool:
        return self in (
            PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
        )

    @property
    def write_exclusive(self) -> bool:
        return self in (
            PrType.WRITE_EXCLUSIVE,
            PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
        )


# Commands a non-holder may still run under the Write Exclusive types: they only read
# the medium or the LU's state (SPC-4 table 63/64, SBC-3 table 13).
READ_OPCODES = frozenset(
    {
        0x08,
        0x28,
        0xA8,
        0x88,  # READ (6/10/12/16)
        0x25,
        0x9E,  # READ CAPACITY (10), SERVICE ACTION IN(16): READ CAPACITY/GET LBA STATUS
        0x2F,
        0xAF,
        0x8F,  # VERIFY (10/12/16)
        0x1A,
        0x5A,  # MODE SENSE (6/10)
        0x37,
        0xB7,  # READ DEFECT DATA (10/12)
        0x4D,  # LOG SENSE
        0x3C,  # READ BUFFER
        0x1C,  # RECEIVE DIAGNOSTIC RESULTS
        0x34,
        0x90,  # PRE-FETCH (10/16)
        0x84,  # RECEIVE COPY RESULTS
        0x05,  # READ BLOCK LIMITS (tape)
    }
)

RESERVE_6, RELEASE_6, RESERVE_10, RELEASE_10 = 0x16, 0x17, 0x56, 0x57
PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT = 0x5E, 0x5F
# Always allowed while another nexus holds a RESERVE(6) (SPC-2 5.5.1).
LEGACY_ALLOWED = frozenset({0x12, 0xA0, 0x03, RELEASE_6, RELEASE_10, PERSISTENT_RESERVE_IN})


class PrStore(Protocol):
    """Where a LU's reservation state is kept beyond this process."""

    # PTPL_C: the store keeps the state through a power loss when APTPL asks for it.
    persistent: bool
    # Other gateways share the state: a RESERVE(6) is kept there too, and enforced by all.
    shared: bool

    async def refresh(self, lu: LogicalUnit) -> None:
        """Bring ``lu.reservations`` up to date with the store (others may change it);
        CheckCondition if it cannot be reached."""

    async def commit(
        self, lu: LogicalUnit, aptpl_before: bool, owed: list[Owed], aborts: list[Nexus]
    ) -> bool:
        """Keep the changed state (a PROUT's, with the unit attentions and aborts it owes
        to nexuses elsewhere); False if another writer changed the store since the last
        refresh (the PROUT is decided again), CheckCondition if it cannot be kept."""

    def forget(self, holder: Nexus) -> None:
        """``holder``'s RESERVE(6) ended here (its nexus is gone, or a reset): end it in
        the shared store too, in the background (only a shared store is told)."""

    def close(self) -> None: ...


@dataclass(slots=True)
class Reservation:
    holder: Nexus  # a registrant (see the module's doc)
    type: PrType


def initiator_name(nexus: Nexus) -> str:
    return nexus.initiator_name or nexus.initiator_port.split(",", 1)[0]


def registrant_for(nexus: Nexus, *, all_target_ports: bool = False, device: bool = False) -> Nexus:
    """The registrant a registration through ``nexus`` (or naming it) is kept under."""
    if not (all_target_ports or device):
        return nexus
    name = initiator_name(nexus)
    port = name if device else nexus.initiator_port
    if all_target_ports:
        return Nexus(port, "", 0, name)
    return Nexus(port, nexus.target_port, nexus.relative_target_port, name)


def all_target_ports(registrant: Nexus) -> bool:
    return registrant.target_port == "" and registrant.relative_target_port == 0


def has_isid(registrant: Nexus) -> bool:
    return "," in registrant.initiator_port


Snapshot = tuple[dict[Nexus, int], "Reservation | None", int, bool, "Nexus | None"]


@dataclass(frozen=True, slots=True)
class Owed:
    """A unit attention a change owes every nexus ``registrant`` covers (but ``sender``)."""

    registrant: Nexus
    reason: Reason
    sender: Nexus | None = None


@dataclass(slots=True)
class ReservationState:
    """Registrations, the persistent reservation and the RESERVE(6) reservation of one LU."""

    keys: dict[Nexus, int] = field(default_factory=dict)  # registrant -> reservation key
    reservation: Reservation | None = None
    generation: int = 0
    legacy: Nexus | None = None
    # APTPL of the most recent REGISTER; the store keeps the state while it is on.
    aptpl: bool = False
    store: PrStore | None = None
    # PERSISTENT RESERVE OUT commands of one LU run one at a time: a change and its write.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The unit attentions the PROUT being served owes, delivered once its change is kept,
    # and the registrants whose commands it aborts then (PREEMPT AND ABORT).
    owed: list[Owed] = field(default_factory=list)
    aborts: list[Nexus] = field(default_factory=list)

    @property
    def persistent(self) -> bool:
        return self.store is not None and self.store.persistent

    @property
    def shared(self) -> bool:
        """Other gateways share this state (a RESERVE(6) is kept with the PRs)."""
        return self.store is not None and self.store.shared

    def snapshot(self) -> Snapshot:
        return dict(self.keys), self.reservation, self.generation, self.aptpl, self.legacy

    def restore(self, snap: Snapshot) -> None:
        self.keys, self.reservation, self.generation, self.aptpl, self.legacy = snap

    def registrant(self, nexus: Nexus) -> Nexus | None:
        """The registrant whose registration covers ``nexus``, if any."""
        keys = self.keys
        if nexus in keys:
            return nexus
        if not keys:
            return None
        name = initiator_name(nexus)
        port = nexus.initiator_port
        for candidate in (
            Nexus(port, nexus.target_port, nexus.relative_target_port, name),
            Nexus(port, "", 0, name),
            Nexus(name, nexus.target_port, nexus.relative_target_port, name),
            Nexus(name, "", 0, name),
        ):
            if candidate in keys:
                return candidate
        return None

    def key_of(self, nexus: Nexus) -> int | None:
        registrant = self.registrant(nexus)
        return None if registrant is None else self.keys[registrant]

    @staticmethod
    def covers(registrant: Nexus, nexus: Nexus) -> bool:
        if registrant == nexus:
            return True
        if not all_target_ports(registrant) and (
            registrant.target_port != nexus.target_port
            or registrant.relative_target_port != nexus.relative_target_port
        ):
            return False
        if has_isid(registrant):
            return registrant.initiator_port == nexus.initiator_port
        return registrant.initiator_port == initiator_name(nexus)

    def is_holder(self, nexus: Nexus) -> bool:
        res = self.reservation
        if res is None:
            return False
        registrant = self.registrant(nexus)
        if res.type.all_registrants:
            return registrant is not None
        return registrant is not None and registrant == res.holder

    def conflict(self, cmd: ScsiCommand, exempt: bool) -> bool:
        """Whether ``cmd`` from its nexus meets RESERVATION CONFLICT."""
        nexus, opcode = cmd.nexus, cmd.opcode
        if self.legacy is not None and self.legacy != nexus:
            return opcode not in LEGACY_ALLOWED
        res = self.reservation
        if res is None or exempt or self.is_holder(nexus):
            return False
        if opcode in (RESERVE_6, RELEASE_6, RESERVE_10, RELEASE_10):
            return True
        if (res.type.registrants_only or res.type.all_registrants) and self.registrant(nexus):
            return False
        return not (res.type.write_exclusive and opcode in READ_OPCODES)

    def lose(self, nexus: Nexus) -> None:
        """The nexus is gone: a RESERVE(6) it held ends; PRs survive (SPC-4)."""
        if self.legacy == nexus:
            self.end_legacy()

    def end_legacy(self) -> None:
        """The RESERVE(6) ends (its nexus is gone, or a reset). Here at once; in a shared
        store once the store has kept that (other gateways enforce it until then)."""
        holder, self.legacy = self.legacy, None
        if holder is not None and self.store is not None and self.store.shared:
            self.store.forget(holder)

    def release(self) -> None:
        self.reservation = None

    def unregister(self, registrant: Nexus, sender: Nexus) -> None:
        """Drop ``registrant``'s registration; a reservation it alone held goes with it."""
        del self.keys[registrant]
        res = self.reservation
        if res is None:
            return
        if res.type.all_registrants:
            if not self.keys:
                self.release()
        elif res.holder == registrant:
            self.release()
            if res.type.registrants_only:
                self.notify(Reason.RESERVATIONS_RELEASED, sender=sender)

    def owe(self, registrant: Nexus, reason: Reason, sender: Nexus | None = None) -> None:
        self.owed.append(Owed(registrant, reason, sender))

    def notify(self, reason: Reason, *, sender: Nexus | None) -> None:
        """A unit attention for every registered nexus but the sender."""
        for registrant in self.keys:
            self.owe(registrant, reason, sender)

    def deliver(self, lu: LogicalUnit, owed: list[Owed]) -> None:
        """Queue the unit attentions ``owed`` on the nexuses that see this LU now."""
        if not owed:
            return
        known = lu.known_nexuses()
        for debt in owed:
            for nexus in known:
                if nexus != debt.sender and self.covers(debt.registrant, nexus):
                    lu.queue_unit_attention(nexus, debt.reason)

    def nexuses_of(self, lu: LogicalUnit, registrants: list[Nexus]) -> frozenset[Nexus]:
        """The nexuses seeing ``lu`` now that ``registrants`` cover."""
        return frozenset(n for n in lu.known_nexuses() for r in registrants if self.covers(r, n))


# -- PERSISTENT RESERVE OUT ------------------------------------------------------------------
ProutHandler = Callable[["LogicalUnit", ScsiCommand], Coroutine[Any, Any, ScsiResult]]


PROUT_ATTEMPTS = 8  # decided again at most this often when other gateways keep winning


Decision = Callable[[], Coroutine[Any, Any, ScsiResult]]


async def keep(lu: LogicalUnit, decide: Decision) -> ScsiResult:
    """Run ``decide`` on the store's latest state (under the LU's PROUT lock) and keep what
    it changed in the store before answering; undo it and fail when it cannot be kept, or
    decide again when another gateway changed the store first. The unit attentions and
    aborts it owes happen only once it is kept."""
    state = lu.reservations
    async with state.lock:
        for _ in range(PROUT_ATTEMPTS):
            if state.store is not None:
                await state.store.refresh(lu)
            state.owed, state.aborts = [], []
            before = state.snapshot()
            try:
                result = await decide()
            except CheckCondition:
                state.restore(before)
                raise
            owed, state.owed = state.owed, []
            aborts, state.aborts = state.aborts, []
            changed = state.snapshot() != before
            if changed and state.store is not None:
                try:
                    kept = await state.store.commit(lu, before[3], owed, aborts)
                except BaseException:
                    state.restore(before)
                    raise
                if not kept:  # another gateway changed it first: decide again
                    state.restore(before)
                    continue
            state.deliver(lu, owed)
            if aborts and lu.abort_tasks is not None:
                await lu.abort_tasks(state.nexuses_of(lu, aborts))
            return result
        log.error("%s: PERSISTENT RESERVE OUT kept losing to other gateways", lu.identity)
        raise CheckCondition(Reason.LOGICAL_UNIT_COMMUNICATION_FAILURE)


def durable(handler: ProutHandler) -> ProutHandler:
    """One PROUT at a time per LU, decided on the store's latest state and kept there
    before it is acknowledged (:func:`keep`). A RESERVE(6) that another gateway's nexus
    took meanwhile (the copy this gateway checked before was older) is still a conflict."""

    @functools.wraps(handler)
    async def run(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
        async def decide() -> ScsiResult:
            legacy = lu.reservations.legacy
            if legacy is not None and legacy != cmd.nexus:
                return CONFLICT
            return await handler(lu, cmd)

        return await keep(lu, decide)

    return run


def current(handler: ProutHandler) -> ProutHandler:
    """A PERSISTENT RESERVE IN answers from the store's latest state."""

    @functools.wraps(handler)
    async def run(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
        state = lu.reservations
        if state.store is None:
            return await handler(lu, cmd)
        async with state.lock:
            await state.store.refresh(lu)
            return await handler(lu, cmd)

    return run


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


CONFLICT = ScsiResult(Status.RESERVATION_CONFLICT)


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


def _registered(lu: LogicalUnit, cmd: ScsiCommand, params: ProutParameters) -> bool:
    return lu.reservations.key_of(cmd.nexus) == params.key


@durable
async def register(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return _register(lu, cmd, ignore_existing=False)


@durable
async def register_and_ignore(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return _register(lu, cmd, ignore_existing=True)


@durable
async def reserve(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    params, pr_type = _parameters(lu, cmd), _type(cmd)
    state = lu.reservations
    if not _registered(lu, cmd, params):
        return CONFLICT
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
    params = _parameters(lu, cmd)
    state = lu.reservations
    if not _registered(lu, cmd, params):
        return CONFLICT
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
    params = _parameters(lu, cmd)
    state = lu.reservations
    if not _registered(lu, cmd, params):
        return CONFLICT
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
    params, pr_type = _parameters(lu, cmd), _type(cmd)
    state = lu.reservations
    if not _registered(lu, cmd, params):
        return CONFLICT
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
