"""The logical unit: identity, per-nexus unit attentions, and dispatch through a table.

Device types (block, tape) subclass :class:`LogicalUnit` and give it their opcode table.
Cross-cutting checks (unknown opcode, unit attention, the ALUA state of the target port,
reservation conflict) happen here once, before the table's handler runs, so handlers only
do their command's own work.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from backing.errors import StoreError
from scsi.alua import AccessGate, PortGroups
from scsi.command import FileRange, Nexus, ScsiCommand, ScsiResult, Status
from scsi.mode import ModePageSet, spc_pages
from scsi.opcodes import SERVICE_ACTION_OPCODES, OpcodeTable
from scsi.reservations import ReservationState
from scsi.sense import CheckCondition, FieldPointer, Reason, build_sense
from scsi.store_errors import StoreErrors
from scsi.task_set import BARRIER_BITS, TaskSet

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    """What INQUIRY and VPD 0x80/0x83 report. Stable for a given ``device_id``.

    ``device_id`` is a string that names the LU durably (for example the target IQN and
    the LUN's backing path); the NAA designator and serial number are derived from it, so
    they survive restarts without a database.
    """

    device_id: str
    vendor: str = "TARGETD"
    product: str = "VIRTUAL-DISK"
    revision: str = "0001"

    @property
    def naa(self) -> bytes:
        """16-byte NAA IEEE Registered Extended (6h) designator."""
        digest = hashlib.sha256(self.device_id.encode()).digest()
        # NAA 6, then a fixed 24-bit company id, then 100 bits from the hash.
        oui = 0x001405  # the company id Linux LIO uses for software targets
        first = (0x6 << 60) | (oui << 36) | int.from_bytes(digest[:5], "big") >> 4
        return first.to_bytes(8, "big") + digest[5:13]

    @property
    def serial(self) -> str:
        return hashlib.sha256(b"serial:" + self.device_id.encode()).hexdigest()[:16]


VpdBuilder = Callable[["LogicalUnit", Nexus], bytes]


@dataclass(frozen=True, slots=True)
class Services:
    """What a LU is given when it is built, by packages scsi/ does not import (xcopy/
    gives each LU of a target the target's copy manager): the commands they serve on the
    LU besides its device type's table, the VPD pages they add, and the copy manager."""

    commands: OpcodeTable | None = None
    vpd_pages: Mapping[int, VpdBuilder] = field(default_factory=dict)
    copy_manager: object | None = None  # an xcopy.CopyManager


NO_SERVICES = Services()


class LogicalUnit:
    """Base of every device type. Subclasses set ``table`` and ``device_type``."""

    table: OpcodeTable
    device_type: int = 0x00
    removable: bool = False
    # Control mode page SWP is changeable only where every writing command honours it.
    supports_software_write_protect: bool = False
    # The LUN map of the target this LU belongs to (ScsiTarget sets it): the LUs an
    # initiator that sees this one may also see, so EXTENDED COPY may reach.
    lun_map: dict[int, LogicalUnit] | None = None
    # An xcopy.shared.SharedCopies for LUs whose data several gateways serve (RBD).
    copy_records: Any = None
    version_descriptors: tuple[int, ...] = ()  # claimed beyond SAM-5/iSCSI/SPC-4/type std

    def __init__(self, identity: Identity, services: Services = NO_SERVICES) -> None:
        self.identity = identity
        self.services = services
        if services.commands is not None:  # this LU's own table: its type's rows and these
            self.table = OpcodeTable(f"{self.table.name}+", self.table, services.commands)
        self._unit_attentions: dict[Nexus, deque[Reason]] = {}
        self._known_nexuses: set[Nexus] = set()
        self.descriptor_sense = False  # control mode page D_SENSE
        self.software_write_protect = False  # control mode page SWP
        self.reservations = ReservationState()
        # The target port groups and their ALUA states; the daemon's builder shares one
        # table among all its LUs (scsi/alua.py).
        self.port_groups = PortGroups()
        # Set on a LU that several gateways serve (targetd/gateway.py): the lock its
        # writes need, and the other gateways' unit attentions after a LOGICAL UNIT RESET.
        self.access_gate: AccessGate | None = None
        self.after_reset: Callable[[], Awaitable[None]] | None = None
        # The LUNs REPORT LUNS lists; ScsiTarget replaces it with its own LUN map's.
        self.report_luns: Callable[[], list[int]] = lambda: [0]
        # Set by the transport: end the commands these I_T nexuses have on this LU (PREEMPT
        # AND ABORT); None where nothing runs commands concurrently (tests).
        self.abort_tasks: Callable[[frozenset[Nexus]], Awaitable[None]] | None = None
        # Failures of the backing store: their sense, counts and rate-limited log lines.
        self.store_errors = StoreErrors(identity.device_id)
        # The task set (one per LU, TST 000b): ORDERED and HEAD OF QUEUE ordering.
        self.task_set = TaskSet()

    @property
    def third_party_copy(self) -> bool:
        """INQUIRY 3PC: the LU was given a copy manager (it serves EXTENDED COPY)."""
        return self.services.copy_manager is not None

    # -- unit attentions -------------------------------------------------------------
    def nexus_established(self, nexus: Nexus) -> None:
        """A new I_T nexus sees this LU: it gets POWER ON, RESET, OR BUS DEVICE RESET."""
        if nexus not in self._known_nexuses:
            self._known_nexuses.add(nexus)
            self._unit_attentions[nexus] = deque([Reason.POWER_ON_RESET])

    def known_nexuses(self) -> frozenset[Nexus]:
        """The I_T nexuses that currently see this LU (logged in)."""
        return frozenset(self._known_nexuses)

    def nexus_lost(self, nexus: Nexus) -> None:
        self._known_nexuses.discard(nexus)
        self._unit_attentions.pop(nexus, None)
        self.reservations.lose(nexus)

    def reset(self, nexus: Nexus | None = None) -> None:
        """LOGICAL UNIT RESET (from ``nexus``, or a target reset when None).

        A RESERVE(6) reservation ends (persistent reservations survive, SPC-4 5.13.1)
        and every nexus, the one that asked included (SAM-5 6.3.3; libiscsi's
        MultipathIO.Reset checks it), gets BUS DEVICE RESET FUNCTION OCCURRED.
        """
        self.reservations.end_legacy()
        self.raise_unit_attention(Reason.BUS_DEVICE_RESET)

    def queue_unit_attention(self, nexus: Nexus, reason: Reason) -> None:
        """Queue ``reason`` for one nexus (if it currently sees this LU)."""
        if nexus in self._known_nexuses:
            queue = self._unit_attentions.setdefault(nexus, deque())
            if reason not in queue:
                queue.append(reason)

    def raise_unit_attention(self, reason: Reason, *, except_nexus: Nexus | None = None) -> None:
        """Queue ``reason`` for every known nexus (but ``except_nexus``)."""
        for nexus in self._known_nexuses:
            if nexus != except_nexus:
                queue = self._unit_attentions.setdefault(nexus, deque())
                if reason not in queue:
                    queue.append(reason)

    def pop_unit_attention(self, nexus: Nexus) -> Reason | None:
        queue = self._unit_attentions.get(nexus)
        if not queue:
            return None
        reason = queue.popleft()
        if not queue:
            # Only nexuses with a unit attention pending keep a queue, so that a LU with
            # none pending (every command, nearly always) skips the lookup: see _dispatch.
            del self._unit_attentions[nexus]
        return reason

    # -- what device types add to the SPC pages --------------------------------------
    def vpd_pages(self) -> dict[int, Callable[[], bytes]]:
        """Device-specific VPD pages: page code to a builder of the whole page (header too).

        SPC's own pages (00h, 80h, 83h ...) are built by scsi.spc; 00h lists these too.
        """
        return {}

    def mode_pages(self) -> dict[int, Any]:
        """Device-specific mode pages (page code to a scsi.mode page object)."""
        return {}

    def mode_device_specific(self) -> int:
        """The DEVICE-SPECIFIC PARAMETER byte of the mode parameter header (WP for disks)."""
        return 0

    def block_descriptor(self) -> bytes | None:
        """The 8-byte mode parameter block descriptor, or None if the type has none."""
        return None

    def long_block_descriptor(self) -> bytes | None:
        """The 16-byte long LBA block descriptor (MODE SENSE(10) LLBAA), or None."""
        return None

    def select_block_descriptor(self, raw: bytes) -> None:
        """MODE SELECT sent a block descriptor: accept it or raise CheckCondition.

        By default only the current descriptor is accepted (NUMBER OF BLOCKS may be 0 or
        the current value); a tape LU overrides this to switch block size.
        """
        current = self.block_descriptor()
        if current is None or len(raw) != len(current):
            raise CheckCondition(
                Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(3, in_cdb=False)
            )
        if raw[4:] != current[4:] or raw[:4] not in (bytes(4), current[:4]):
            raise CheckCondition(
                Reason.INVALID_FIELD_IN_PARAMETER_LIST, FieldPointer(4, in_cdb=False)
            )

    @cached_property
    def mode(self) -> ModePageSet:
        """The LU's live mode pages: SPC's control and informational exceptions pages
        plus ``mode_pages()``, built on first use."""
        return ModePageSet([*spc_pages(self), *self.mode_pages().values()])

    # -- reservations ------------------------------------------------------------------
    def reservation_conflict(self, cmd: ScsiCommand, spec_conflict_exempt: bool) -> bool:
        return self.reservations.conflict(cmd, spec_conflict_exempt)

    def admit(self, nexus: Nexus, opcode: int) -> ScsiResult | None:
        """The ALUA and reservation checks :meth:`execute` makes before a handler, for work
        a copy manager does on ``nexus``'s behalf by other means than a command (a kernel
        copy into the LU's file): NOT READY or RESERVATION CONFLICT, or None when
        ``opcode`` may run."""
        probe = ScsiCommand(bytes([opcode]), 0, nexus)
        refusal = self.port_groups.refusal(nexus.relative_target_port, probe.cdb)
        if refusal is not None:
            return self.check_condition(CheckCondition(refusal))
        if self.reservation_conflict(probe, False):
            return ScsiResult(Status.RESERVATION_CONFLICT)
        return None

    # -- dispatch ------------------------------------------------------------------
    def execute(self, cmd: ScsiCommand) -> Coroutine[Any, Any, ScsiResult]:
        """A command from an initiator (its coroutine: one frame less per command)."""
        return self._dispatch(cmd, unit_attentions=True)

    async def execute_for(self, cmd: ScsiCommand) -> ScsiResult:
        """A command a copy manager sends on behalf of ``cmd.nexus`` (the I_T nexus that
        sent the EXTENDED COPY): the same lookup, reservation check and handler as
        :meth:`execute`, but the nexus's unit attentions are left for its own commands
        (the copy manager is not the initiator they are meant for)."""
        return await self._dispatch(cmd, unit_attentions=False)

    async def _dispatch(self, cmd: ScsiCommand, *, unit_attentions: bool) -> ScsiResult:
        cdb = cmd.cdb
        # Initiators' commands go through the task set; a copy manager's run inside the
        # EXTENDED COPY task that is already in it. A SIMPLE command with nothing ORDERED
        # about only bumps the count (scsi/task_set.py).
        task_set = self.task_set if unit_attentions else None
        if task_set is not None:
            if task_set.gated or cmd.attribute & BARRIER_BITS:
                await task_set.enter(cmd.attribute)
            else:
                task_set.active += 1
        result: ScsiResult | None = None
        try:
            try:
                # An empty CDB cannot come over iSCSI (16 bytes at least), but other callers
                # (the copy manager, tests) must get an answer too, not an IndexError.
                spec = self.table.lookup(cdb) if cdb else None
                if spec is None:
                    if not cdb:
                        raise CheckCondition(Reason.INVALID_OPCODE, FieldPointer(0, bit=7))
                    if cdb[0] in SERVICE_ACTION_OPCODES and self.table.has_opcode(cdb[0]):
                        raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(1, bit=4))
                    raise CheckCondition(Reason.INVALID_OPCODE, FieldPointer(0, bit=7))
                if len(cdb) < spec.cdb_length:
                    raise CheckCondition(Reason.INVALID_FIELD_IN_CDB, FieldPointer(0))
                # Each check below first asks whether there is anything to check at all: a
                # unit attention pending for any nexus, a port group whose state refuses
                # commands, a reservation. Nearly always there is not.
                if unit_attentions and self._unit_attentions and not spec.ua_exempt:
                    ua = self.pop_unit_attention(cmd.nexus)
                    if ua is not None:
                        return self.check_condition(CheckCondition(ua))
                port_groups = self.port_groups
                if port_groups.restricted:
                    refusal = port_groups.refusal(cmd.nexus.relative_target_port, cdb)
                    if refusal is not None:
                        raise CheckCondition(refusal)
                reservations = self.reservations
                if (
                    reservations.legacy is not None or reservations.reservation is not None
                ) and self.reservation_conflict(cmd, spec.conflict_exempt):
                    return ScsiResult(Status.RESERVATION_CONFLICT)
                gate = self.access_gate
                if gate is None:
                    result = await spec.handler(self, cmd)
                    return result
                entered = await gate.enter(cmd.nexus, cdb)
                try:
                    # A write may have waited there for the other gateway to give the image's
                    # lock up (up to its hold time): a reservation taken or a registration
                    # preempted meanwhile, through either gateway, shuts it out all the same,
                    # or a fenced host's late write would land after its fencing.
                    if (
                        reservations.legacy is not None or reservations.reservation is not None
                    ) and self.reservation_conflict(cmd, spec.conflict_exempt):
                        return ScsiResult(Status.RESERVATION_CONFLICT)
                    result = await spec.handler(self, cmd)
                    return result
                except StoreError as exc:
                    if gate.fenced(exc):
                        raise CheckCondition(Reason.LU_NOT_ACCESSIBLE_TRANSITIONING) from exc
                    raise
                finally:
                    gate.leave(entered)
            except CheckCondition as cc:
                return self.check_condition(cc)
            except StoreError as exc:  # a full or failing disk: its own sense, no traceback
                return self.check_condition(self.store_errors.answer(exc))
            except Exception:
                log.exception("internal error executing %s on %s", cdb[:1].hex(), self.identity)
                return ScsiResult(
                    Status.CHECK_CONDITION,
                    sense=build_sense(Reason.INTERNAL_TARGET_FAILURE),
                )
        finally:
            if task_set is not None:
                if cmd.file_data_in and result is not None and type(result.data) is FileRange:
                    # Sent from the file later: the task completes when the initiator has
                    # the bytes, not now (scsi/task_set.py, Hold).
                    hold = result.hold = task_set.hold(cmd.attribute)
                    if result.data.track is not None:
                        result.data.track(hold)
                elif task_set.gated or cmd.attribute & BARRIER_BITS:
                    task_set.finished(cmd.attribute)
                else:
                    task_set.active -= 1

    def check_condition(self, cc: CheckCondition) -> ScsiResult:
        return ScsiResult(Status.CHECK_CONDITION, sense=cc.sense(self.descriptor_sense))
