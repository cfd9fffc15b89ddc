"""Reservations: PERSISTENT RESERVE IN/OUT and RESERVE/RELEASE (6)/(10).

:class:`ReservationState` is one LU's reservation state, keyed by I_T nexus, and answers
the conflict question that ``LogicalUnit.execute`` asks before every handler
(SPC-4 5.13.1 and its table of commands allowed under each reservation type).
The handler functions at the bottom are registered in ``scsi.spc.SPC_TABLE``.

APTPL is served when the LU was given a file for it (``ReservationState.file``, set by the
daemon's builder: scsi/pr_file.py); every state-changing PERSISTENT RESERVE OUT then writes
the state durably before it is acknowledged. Not supported (and so reported as such in
REPORT CAPABILITIES): SPEC_I_PT and ALL_TG_PT.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.sense import CheckCondition, FieldPointer, Reason

if TYPE_CHECKING:
    from scsi.logical_unit import LogicalUnit
    from scsi.pr_file import PrFile

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


@dataclass(slots=True)
class Reservation:
    holder: Nexus
    type: PrType


@dataclass(slots=True)
class ReservationState:
    """Registrations, the persistent reservation and the RESERVE(6) reservation of one LU."""

    keys: dict[Nexus, int] = field(default_factory=dict)
    reservation: Reservation | None = None
    generation: int = 0
    legacy: Nexus | None = None
    # APTPL of the most recent REGISTER; the file keeps the state while it is on.
    aptpl: bool = False
    file: PrFile | None = None
    # PERSISTENT RESERVE OUT commands of one LU run one at a time: a change and its write.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def snapshot(self) -> tuple[dict[Nexus, int], Reservation | None, int, bool]:
        return dict(self.keys), self.reservation, self.generation, self.aptpl

    def restore(self, snap: tuple[dict[Nexus, int], Reservation | None, int, bool]) -> None:
        self.keys, self.reservation, self.generation, self.aptpl = snap

    def is_holder(self, nexus: Nexus) -> bool:
        res = self.reservation
        if res is None:
            return False
        if res.type.all_registrants:
            return nexus in self.keys
        return res.holder == nexus

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
        registered = nexus in self.keys
        if registered and (res.type.registrants_only or res.type.all_registrants):
            return False
        return not (res.type.write_exclusive and opcode in READ_OPCODES)

    def lose(self, nexus: Nexus) -> None:
        """The nexus is gone (or reset): a RESERVE(6) it held ends; PRs survive (SPC-4)."""
        if self.legacy == nexus:
            self.legacy = None

    def release(self) -> None:
        self.reservation = None

    def unregister(self, lu: LogicalUnit, nexus: Nexus) -> None:
        """Drop ``nexus``'s registration; a reservation it alone held goes with it."""
        del self.keys[nexus]
        res = self.reservation
        if res is None:
            return
        if res.type.all_registrants:
            if not self.keys:
                self.release()
        elif res.holder == nexus:
            self.release()
            if res.type.registrants_only:
                self.notify(lu, Reason.RESERVATIONS_RELEASED, except_nexus=nexus)

    def notify(self, lu: LogicalUnit, reason: Reason, *, except_nexus: Nexus | None) -> None:
        """A unit attention for every registered nexus but one."""
        for nexus in list(self.keys):
            if nexus != except_nexus:
                lu.queue_unit_attention(nexus, reason)


# -- PERSISTENT RESERVE IN -------------------------------------------------------------------
def _allocation(cmd: ScsiCommand) -> int:
    return int.from_bytes(cmd.cdb[7:9], "big")


def _header(state: ReservationState, body: bytes) -> bytes:
    return state.generation.to_bytes(4, "big") + len(body).to_bytes(4, "big") + body


async def read_keys(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    state = lu.reservations
    body = b"".join(key.to_bytes(8, "big") for key in state.keys.values())
    return ScsiResult(data=_header(state, body)[: _allocation(cmd)])


def _reservation_key(state: ReservationState, res: Reservation) -> int:
    return 0 if res.type.all_registrants else state.keys.get(res.holder, 0)


async def read_reservation(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    state = lu.reservations
    res = state.reservation
    body = b""
    if res is not None:
        body = _reservation_key(state, res).to_bytes(8, "big") + bytes([0] * 5 + [res.type, 0, 0])
    return ScsiResult(data=_header(state, body)[: _allocation(cmd)])


async def report_capabilities(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    data = bytearray(8)
    data[1] = 8
    state = lu.reservations
    # CRH: RESERVE(6) meets a persistent reservation with a conflict; PTPL_C: APTPL served.
    data[2] = 0x10 | (0x01 if state.file is not None else 0)
    # TMV: the type mask is valid; ALLOW COMMANDS 000b; PTPL_A: APTPL is on.
    data[3] = 0x80 | (0x01 if state.aptpl else 0)
    data[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02  # WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
    data[5] = 0x01  # EX_AC_AR
    return ScsiResult(data=bytes(data)[: _allocation(cmd)])


async def read_full_status(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    state = lu.reservations
    res = state.reservation
    descriptors = []
    for nexus, key in state.keys.items():
        holder = state.is_holder(nexus)
        tid = nexus.transport_id
        descriptors.append(
            key.to_bytes(8, "big")
            + bytes(4)
            + bytes([0x01 if holder else 0, res.type if holder and res else 0])
            + bytes(4)
            + nexus.relative_target_port.to_bytes(2, "big")
            + len(tid).to_bytes(4, "big")
            + tid
        )
    return ScsiResult(data=_header(state, b"".join(descriptors))[: _allocation(cmd)])


# -- PERSISTENT RESERVE OUT ------------------------------------------------------------------
ProutHandler = Callable[["LogicalUnit", ScsiCommand], Coroutine[Any, Any, ScsiResult]]


def durable(handler: ProutHandler) -> ProutHandler:
    """One PROUT at a time per LU; a change it made is on disk (APTPL) before the command
    is acknowledged, or undone and the command fails when the write fails."""

    @functools.wraps(handler)
    async def run(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
        state = lu.reservations
        async with state.lock:
            before = state.snapshot()
            result = await handler(lu, cmd)
            if state.file is None or state.snapshot() == before:
                return result
            if not (state.aptpl or before[3]):  # APTPL off before and after: no file
                return result
            try:
                await state.file.save(state)
            except OSError as err:
                log.error("persistent reservations not saved to %s: %s", state.file.path, err)
                state.restore(before)
                raise CheckCondition(Reason.INSUFFICIENT_REGISTRATION_RESOURCES) from None
            return result

    return run


@dataclass(frozen=True, slots=True)
class ProutParameters:
    key: int
    sa_key: int
    aptpl: bool = False


def _parameters(lu: LogicalUnit, cmd: ScsiCommand) -> ProutParameters:
    length = int.from_bytes(cmd.cdb[5:9], "big")
    data = bytes(cmd.data_out or b"")[:length]
    if length != 24 or len(data) < 24:
        raise CheckCondition(Reason.PARAMETER_LIST_LENGTH_ERROR)
    if data[20] & 0x08:
        raise CheckCondition(
            Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(20, bit=3, in_cdb=False)
        )
    if data[20] & 0x04:
        raise CheckCondition(
            Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(20, bit=2, in_cdb=False)
        )
    aptpl = bool(data[20] & 0x01)
    if aptpl and lu.reservations.file is None:  # PTPL_C 0: the LU cannot keep them
        raise CheckCondition(
            Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(20, bit=0, in_cdb=False)
        )
    return ProutParameters(
        int.from_bytes(data[0:8], "big"), int.from_bytes(data[8:16], "big"), aptpl
    )


def _type(cmd: ScsiCommand) -> PrType:
    if cmd.cdb[2] & 0xF0:  # scope other than LU_SCOPE
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2, bit=7))
    try:
        return PrType(cmd.cdb[2] & 0x0F)
    except ValueError:
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(2, bit=3)) from None


CONFLICT = ScsiResult(Status.RESERVATION_CONFLICT)


def _register(lu: LogicalUnit, cmd: ScsiCommand, ignore_existing: bool) -> ScsiResult:
    params = _parameters(lu, cmd)
    state, nexus = lu.reservations, cmd.nexus
    current = state.keys.get(nexus)
    if not ignore_existing and params.key != (current or 0):
        return CONFLICT
    if current is None:
        if params.sa_key == 0:
            return ScsiResult()
        state.keys[nexus] = params.sa_key
    elif params.sa_key == 0:
        state.unregister(lu, nexus)
    else:
        state.keys[nexus] = params.sa_key
    state.generation += 1
    state.aptpl = params.aptpl  # the most recent REGISTER decides (SPC-4 5.13.5)
    return ScsiResult()


def _registered(lu: LogicalUnit, cmd: ScsiCommand, params: ProutParameters) -> bool:
    return lu.reservations.keys.get(cmd.nexus) == params.key


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
        state.reservation = Reservation(cmd.nexus, pr_type)
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
        state.notify(lu, Reason.RESERVATIONS_RELEASED, except_nexus=cmd.nexus)
    return ScsiResult()


@durable
async def clear(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    params = _parameters(lu, cmd)
    state = lu.reservations
    if not _registered(lu, cmd, params):
        return CONFLICT
    state.notify(lu, Reason.RESERVATIONS_PREEMPTED, except_nexus=cmd.nexus)
    state.keys.clear()
    state.release()
    state.generation += 1
    return ScsiResult()


def _remove_registrations(lu: LogicalUnit, cmd: ScsiCommand, key: int) -> list[Nexus]:
    """Unregister every other nexus registered with ``key``: the ones removed."""
    state = lu.reservations
    victims = [n for n, k in state.keys.items() if k == key and n != cmd.nexus]
    for nexus in victims:
        del state.keys[nexus]
        lu.queue_unit_attention(nexus, Reason.REGISTRATIONS_PREEMPTED)
    return victims


PREEMPT_AND_ABORT = 0x05


@durable
async def preempt(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """PREEMPT, and PREEMPT AND ABORT: the latter also ends the commands the preempted
    nexuses have on this LU, before it completes (SPC-4 5.13.11.2.6)."""
    params, pr_type = _parameters(lu, cmd), _type(cmd)
    state = lu.reservations
    if not _registered(lu, cmd, params):
        return CONFLICT
    res = state.reservation
    holder_key = None if res is None or res.type.all_registrants else state.keys.get(res.holder)
    victims: list[Nexus] = []
    if res is not None and res.type.all_registrants and params.sa_key == 0:
        victims = [n for n in state.keys if n != cmd.nexus]
        for nexus in victims:
            del state.keys[nexus]
            lu.queue_unit_attention(nexus, Reason.REGISTRATIONS_PREEMPTED)
        state.reservation = Reservation(cmd.nexus, pr_type)
    elif res is not None and holder_key == params.sa_key:
        victims = _remove_registrations(lu, cmd, params.sa_key)
        state.reservation = Reservation(cmd.nexus, pr_type)
        if res.type != pr_type:
            state.notify(lu, Reason.RESERVATIONS_RELEASED, except_nexus=cmd.nexus)
    else:
        if params.sa_key == 0:
            raise CheckCondition(
                Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(8, in_cdb=False)
            )
        victims = _remove_registrations(lu, cmd, params.sa_key)
        if not victims and state.keys.get(cmd.nexus) != params.sa_key:
            return CONFLICT
    state.generation += 1
    if cmd.cdb[1] & 0x1F == PREEMPT_AND_ABORT and victims and lu.abort_tasks is not None:
        await lu.abort_tasks(frozenset(victims))
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
    if state.keys.get(sender) != key:
        return CONFLICT
    res = state.reservation
    if res is None or res.type.all_registrants or res.holder != sender:
        return CONFLICT
    if aptpl and state.file is None:
        raise _invalid_parameter(17, 0)
    if sa_key == 0:
        raise _invalid_parameter(8)
    destination = _move_destination(lu, sender, data)
    if destination == sender:
        raise _invalid_parameter(18)
    state.keys[destination] = sa_key
    state.reservation = Reservation(destination, res.type)
    if unreg:
        del state.keys[sender]
    state.aptpl = aptpl
    state.generation += 1
    return ScsiResult()


# -- RESERVE / RELEASE (6) and (10) ----------------------------------------------------------
async def reserve_legacy(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    if cmd.opcode == RESERVE_10 and cmd.cdb[1] & 0x03:  # 3RDPTY, LONGID: not supported
        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1))
    state = lu.reservations
    if state.reservation is not None:
        # CRH: a persistent reservation wins; its holder's RESERVE is a no-op.
        return ScsiResult() if state.is_holder(cmd.nexus) else CONFLICT
    if state.legacy not in (None, cmd.nexus):
        return CONFLICT
    state.legacy = cmd.nexus
    return ScsiResult()


async def release_legacy(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    state = lu.reservations
    if state.legacy == cmd.nexus:
        state.legacy = None
    return ScsiResult()
