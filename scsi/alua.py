"""Asymmetric logical unit access (ALUA, SPC-4 5.15): target port groups and their states.

One :class:`PortGroups` table holds every target port group, its asymmetric access state
and the relative target ports in it. A LU asks it once per command (in its cross-cutting
checks, after unit attentions and before reservations, as LIO's core_alua_state_check
does) whether the state of the port the command came through lets the command run; handlers
never look at ALUA. REPORT TARGET PORT GROUPS and VPD 83h are built from the same table.

Transitions are implicit only (TPGS 01b): the operator declares the states in the
configuration and a reload changes them; SET TARGET PORT GROUPS is not served.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from backing.errors import StoreError
from scsi.command import Nexus
from scsi.opcodes import SERVICE_ACTION_OPCODES
from scsi.sense import Reason


class AccessState(IntEnum):
    """ASYMMETRIC ACCESS STATE codes (SPC-4 table 167)."""

    ACTIVE_OPTIMIZED = 0x0
    ACTIVE_NON_OPTIMIZED = 0x1
    STANDBY = 0x2
    UNAVAILABLE = 0x3
    TRANSITIONING = 0xF


# The names the configuration uses.
STATE_NAMES: dict[str, AccessState] = {
    "active/optimized": AccessState.ACTIVE_OPTIMIZED,
    "active/non-optimized": AccessState.ACTIVE_NON_OPTIMIZED,
    "standby": AccessState.STANDBY,
    "unavailable": AccessState.UNAVAILABLE,
    "transitioning": AccessState.TRANSITIONING,
}

# RTPG's supported-states bits: T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP.
SUPPORTED_STATES = 0x80 | 0x08 | 0x04 | 0x02 | 0x01

# RTPG STATUS CODE: the state was last changed by an implicit transition (here: a reload).
STATUS_IMPLICIT = 0x02

Key = tuple[int, int | None]  # (opcode, service action or None)

# Commands every state serves (SPC-4 5.15.2.4.5/6: unavailable and transitioning), plus the
# reports SPC-5 adds to those lists (REPORT SUPPORTED OPERATION CODES / TMFs), so an
# initiator can still learn what the LU is and why it refuses.
_ALWAYS: frozenset[Key] = frozenset(
    {
        (0x12, None),  # INQUIRY
        (0xA0, None),  # REPORT LUNS
        (0x03, None),  # REQUEST SENSE
        (0xA3, 0x0A),  # REPORT TARGET PORT GROUPS
        (0xA3, 0x0C),  # REPORT SUPPORTED OPERATION CODES
        (0xA3, 0x0D),  # REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
    }
)
# Standby (5.15.2.4.4) adds mode and log pages, diagnostics and persistent reservations;
# READ CAPACITY too, as LIO serves it, so a host can size a standby path's disk.
_STANDBY: frozenset[Key] = _ALWAYS | {
    (0x1A, None),  # MODE SENSE(6)
    (0x5A, None),  # MODE SENSE(10)
    (0x15, None),  # MODE SELECT(6)
    (0x55, None),  # MODE SELECT(10)
    (0x4D, None),  # LOG SENSE
    (0x4C, None),  # LOG SELECT
    (0x1C, None),  # RECEIVE DIAGNOSTIC RESULTS
    (0x1D, None),  # SEND DIAGNOSTIC
    (0x25, None),  # READ CAPACITY(10)
    (0x9E, 0x10),  # READ CAPACITY(16)
    *((0x5E, sa) for sa in range(0x20)),  # PERSISTENT RESERVE IN
    *((0x5F, sa) for sa in range(0x20)),  # PERSISTENT RESERVE OUT
}

# What each state that restricts access allows, and the sense the rest gets.
ALLOWED: dict[AccessState, frozenset[Key]] = {
    AccessState.STANDBY: _STANDBY,
    AccessState.UNAVAILABLE: _ALWAYS,
    AccessState.TRANSITIONING: _ALWAYS,
}
REFUSAL: dict[AccessState, Reason] = {
    AccessState.STANDBY: Reason.LU_NOT_ACCESSIBLE_STANDBY,
    AccessState.UNAVAILABLE: Reason.LU_NOT_ACCESSIBLE_UNAVAILABLE,
    AccessState.TRANSITIONING: Reason.LU_NOT_ACCESSIBLE_TRANSITIONING,
}


# Commands that change the medium, or answer from state only the writer keeps (GET LBA
# STATUS: the allocation the holder tracks). On a LU two gateways serve, these need the
# holder of the image's lock; everything else (reads included) is served through any path.
_OWNERSHIP: frozenset[Key] = frozenset(
    {
        (0x04, None),  # FORMAT UNIT
        (0x0A, None),  # WRITE(6)
        (0x2A, None),  # WRITE(10)
        (0xAA, None),  # WRITE(12)
        (0x8A, None),  # WRITE(16)
        (0x2E, None),  # WRITE AND VERIFY(10)
        (0xAE, None),  # WRITE AND VERIFY(12)
        (0x8E, None),  # WRITE AND VERIFY(16)
        (0x41, None),  # WRITE SAME(10)
        (0x93, None),  # WRITE SAME(16)
        (0x42, None),  # UNMAP
        (0x89, None),  # COMPARE AND WRITE
        (0x8B, None),  # ORWRITE(16)
        (0x48, None),  # SANITIZE
        (0x9E, 0x12),  # GET LBA STATUS
    }
)


def needs_ownership(cdb: bytes) -> bool:
    """Whether ``cdb`` needs the gateway that runs it to hold the image's lock."""
    return _key(cdb) in _OWNERSHIP


class AccessGate(Protocol):
    """What a LU served by several gateways asks before and after a command's handler
    (targetd/gateway.py: the holder of RBD's exclusive lock). ``enter`` raises
    CheckCondition (NOT READY, transitioning) when the command cannot run through this
    gateway now; ``fenced`` tells whether a store failure means this gateway was fenced
    (blocklisted), which the initiator sees as a transition, not a medium error."""

    async def enter(self, nexus: Nexus, cdb: bytes) -> bool: ...

    def leave(self, entered: bool) -> None: ...

    def fenced(self, error: StoreError) -> bool: ...


@dataclass(frozen=True, slots=True)
class PortGroup:
    """A target port group: its id, state and the relative target ports in it."""

    id: int
    state: AccessState = AccessState.ACTIVE_OPTIMIZED
    ports: tuple[int, ...] = ()
    preferred: bool = False


def _key(cdb: bytes) -> Key:
    opcode = cdb[0]
    if opcode in SERVICE_ACTION_OPCODES and len(cdb) > 1:
        return opcode, cdb[1] & 0x1F
    return opcode, None


class PortGroups:
    """Every target port group of the daemon. A port listed in no group (a LU built
    outside the daemon, in tests) counts as a port of the first group."""

    def __init__(self, groups: Iterable[PortGroup] = (PortGroup(1, ports=(1,)),)) -> None:
        self._set(tuple(groups))

    def _set(self, groups: tuple[PortGroup, ...]) -> None:
        if not groups:
            raise ValueError("at least one target port group is required")
        self.groups = groups
        self._by_port = {port: group for group in groups for port in group.ports}
        # Some group's state refuses some commands (every group active: none does, and the
        # LU skips the per-command check).
        self.restricted = any(group.state in ALLOWED for group in groups)

    def group_of(self, relative_port: int) -> PortGroup:
        return self._by_port.get(relative_port, self.groups[0])

    def refusal(self, relative_port: int, cdb: bytes) -> Reason | None:
        """Why a command through ``relative_port`` may not run now, or None if it may."""
        state = self.group_of(relative_port).state
        allowed = ALLOWED.get(state)
        if allowed is None or _key(cdb) in allowed:
            return None
        return REFUSAL[state]

    def update(self, groups: Iterable[PortGroup]) -> bool:
        """New states (a reload): True when a port's group or its group's state changed,
        so every nexus gets ASYMMETRIC ACCESS STATE CHANGED."""
        before = {p: (g.id, g.state) for g in self.groups for p in g.ports}
        self._set(tuple(groups))
        after = {p: (g.id, g.state) for g in self.groups for p in g.ports}
        return before != after

    def report(self, *, extended: bool) -> bytes:
        """REPORT TARGET PORT GROUPS parameter data (SPC-4 6.36), length or extended
        header (implicit transition time 0: not specified)."""
        body = b"".join(_descriptor(g) for g in self.groups)
        if extended:
            return (len(body) + 4).to_bytes(4, "big") + bytes([0x10, 0, 0, 0]) + body
        return len(body).to_bytes(4, "big") + body


def _descriptor(group: PortGroup) -> bytes:
    head = bytes([(0x80 if group.preferred else 0) | group.state, SUPPORTED_STATES])
    head += group.id.to_bytes(2, "big") + bytes([0, STATUS_IMPLICIT, 0, len(group.ports)])
    return head + b"".join(bytes(2) + port.to_bytes(2, "big") for port in group.ports)
