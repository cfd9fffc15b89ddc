"""Reservations: PERSISTENT RESERVE IN/OUT and RESERVE/RELEASE (6)/(10).

:class:`ReservationState` is one LU's reservation state, keyed by I_T nexus, and answers
the conflict question that ``LogicalUnit.execute`` asks before every handler
(SPC-4 5.13.1 and its table of commands allowed under each reservation type).
The commands that change it are in scsi/pr_out.py (PERSISTENT RESERVE OUT, RESERVE and
RELEASE), those that read it in scsi/pr_in.py; scsi/pr_keep.py keeps each change in the
LU's store before it is answered.

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
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

from scsi.command import Nexus, ScsiCommand
from scsi.sense import Reason

if TYPE_CHECKING:
    from scsi.logical_unit import LogicalUnit


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
