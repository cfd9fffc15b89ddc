"""APTPL: a LU's persistent reservations kept in a file, so they survive a restart and a
power loss (SPC-4 5.13.5).

While the most recent REGISTER asked for APTPL, every PERSISTENT RESERVE OUT that changes
the state writes the whole state (registrations by I_T nexus, the reservation, the
generation) to a new file, fsyncs it, renames it over the old one and fsyncs the directory,
all before the command is acknowledged. A REGISTER with APTPL 0 removes the file (durably
too): from then on a power loss forgets the reservations, as the initiator asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backing.durable import replace_file, sync_directory
from scsi.command import Nexus
from scsi.sense import CheckCondition, Reason

if TYPE_CHECKING:
    from scsi.logical_unit import LogicalUnit
    from scsi.reservations import Owed, ReservationState

log = logging.getLogger(__name__)

VERSION = 1


def encode(state: ReservationState) -> dict[str, Any]:
    res = state.reservation
    return {
        "version": VERSION,
        "generation": state.generation,
        "registrations": [
            {"nexus": nexus_record(nexus), "key": key} for nexus, key in state.keys.items()
        ],
        "reservation": None
        if res is None
        else {"holder": nexus_record(res.holder), "type": res.type},
    }


def nexus_record(nexus: Nexus) -> dict[str, Any]:
    return {
        "initiator_port": nexus.initiator_port,
        "target_port": nexus.target_port,
        "relative_target_port": nexus.relative_target_port,
        "initiator_name": nexus.initiator_name,
    }


def decode_into(state: ReservationState, record: dict[str, Any]) -> None:
    """Restore ``record`` (from :func:`encode`) into ``state``; ValueError if malformed."""
    from scsi.reservations import PrType, Reservation

    try:
        if record["version"] != VERSION:
            raise ValueError(f"version {record['version']!r}")
        keys = {Nexus(**r["nexus"]): int(r["key"]) for r in record["registrations"]}
        res = record["reservation"]
        reservation = None
        if res is not None:
            reservation = Reservation(Nexus(**res["holder"]), PrType(res["type"]))
        generation = int(record["generation"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"malformed reservation record: {err!r}") from None
    state.keys = keys
    state.reservation = reservation
    state.generation = generation
    state.aptpl = True


class PrFile:
    """Where one LU's APTPL state lives (a :class:`scsi.reservations.PrStore`)."""

    persistent = True
    shared = False  # SPC-2 reservations stay in memory: no one else serves this LU

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    async def refresh(self, lu: LogicalUnit) -> None:
        """Nothing: no one else changes this LU's state."""

    async def commit(
        self, lu: LogicalUnit, aptpl_before: bool, owed: list[Owed], aborts: list[Nexus]
    ) -> bool:
        """Write the state while APTPL is (or was until this change) on; a write that
        fails fails the command with INSUFFICIENT REGISTRATION RESOURCES."""
        state = lu.reservations
        if not (state.aptpl or aptpl_before):
            return True
        try:
            await self.save(state)
        except OSError as err:
            log.error("persistent reservations not saved to %s: %s", self.path, err)
            raise CheckCondition(Reason.INSUFFICIENT_REGISTRATION_RESOURCES) from None
        return True

    def forget(self, holder: Nexus) -> None:
        """Nothing: RESERVE(6) is not kept here."""

    def close(self) -> None:
        """Nothing to release."""

    def load_into(self, state: ReservationState) -> bool:
        """Restore the state kept by an earlier run, if any; True if there was one. An
        unreadable file is logged and kept aside (``.bad``), never silently dropped."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return False
        try:
            decode_into(state, json.loads(text))
        except ValueError as err:
            bad = self.path.with_suffix(".bad")
            os.replace(self.path, bad)
            log.error("persistent reservations in %s unreadable, moved to %s: %s",
                      self.path, bad, err)  # fmt: skip
            return False
        return True

    async def save(self, state: ReservationState) -> None:
        """Write ``state`` durably (or remove the file when APTPL is off); OSError if not."""
        record = encode(state) if state.aptpl else None
        await asyncio.to_thread(self._write, record)

    def _write(self, record: dict[str, Any] | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if record is None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return
            sync_directory(self.path.parent)
        else:
            replace_file(self.path, json.dumps(record, sort_keys=True).encode(), mode=0o666)
