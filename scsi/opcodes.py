"""Opcode tables: one per device type, built by decorating handlers.

REPORT SUPPORTED OPERATION CODES is generated from these tables, so a command that is
in the table is reported and a command that is reported is served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scsi.command import ScsiCommand, ScsiResult

Handler = Callable[[Any, "ScsiCommand"], Awaitable["ScsiResult"]]

# Opcodes whose CDB byte 1 (low five bits) carries a service action.
SERVICE_ACTION_OPCODES = frozenset({0x5E, 0x5F, 0x83, 0x84, 0x9E, 0x9F, 0xA3, 0xA4})


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One row of an opcode table.

    ``usage`` is the CDB usage data of REPORT SUPPORTED OPERATION CODES: its length is
    the CDB length, each byte a mask of the bits the handler looks at.
    ``ua_exempt`` commands run even with a unit attention pending (INQUIRY, REPORT LUNS,
    REQUEST SENSE). ``conflict_exempt`` commands run despite another nexus's reservation
    (SPC-4 tables 81/82 for the ones a device must allow).
    """

    opcode: int
    service_action: int | None
    name: str
    handler: Handler
    usage: bytes
    ua_exempt: bool = False
    conflict_exempt: bool = False
    cdb_length: int = field(init=False)  # len(usage), read on every command

    def __post_init__(self) -> None:
        object.__setattr__(self, "cdb_length", len(self.usage))


class OpcodeTable:
    """Maps (opcode, service action) to a :class:`CommandSpec`."""

    def __init__(self, name: str, *bases: OpcodeTable) -> None:
        self.name = name
        self._specs: dict[tuple[int, int | None], CommandSpec] = {}
        # The rows without a service action, by opcode: lookup's one index per command.
        self._plain: list[CommandSpec | None] = [None] * 256
        for base in bases:
            self._add(base._specs)

    def _add(self, specs: dict[tuple[int, int | None], CommandSpec]) -> None:
        self._specs.update(specs)
        for (opcode, service_action), spec in specs.items():
            if service_action is None:
                self._plain[opcode] = spec

    def command(
        self,
        opcode: int,
        name: str,
        usage: bytes,
        *,
        service_action: int | None = None,
        ua_exempt: bool = False,
        conflict_exempt: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator: register ``handler`` for ``opcode`` (and ``service_action``)."""

        def register(handler: Handler) -> Handler:
            key = (opcode, service_action)
            if key in self._specs and self._specs[key].handler is not handler:
                raise ValueError(f"{self.name}: {name} registered twice")
            spec = CommandSpec(
                opcode, service_action, name, handler, usage, ua_exempt, conflict_exempt
            )
            self._add({key: spec})
            return handler

        return register

    def extend(self, other: OpcodeTable) -> None:
        """Add every row of ``other`` (used to layer SPC under a device type's table)."""
        self._add(other._specs)

    def lookup(self, cdb: bytes) -> CommandSpec | None:
        opcode = cdb[0]
        if opcode in SERVICE_ACTION_OPCODES:
            return self._specs.get((opcode, cdb[1] & 0x1F)) if len(cdb) > 1 else None
        return self._plain[opcode]

    def has_opcode(self, opcode: int) -> bool:
        return any(op == opcode for op, _ in self._specs)

    def get(self, opcode: int, service_action: int | None = None) -> CommandSpec | None:
        return self._specs.get((opcode, service_action))

    def __iter__(self) -> Iterator[CommandSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: (s.opcode, s.service_action or 0)))

    def __len__(self) -> int:
        return len(self._specs)
