"""The contract between a transport (iSCSI) and the SCSI layer.

A transport builds a :class:`ScsiCommand` from what arrived on the wire, awaits
``ScsiTarget.execute`` and turns the :class:`ScsiResult` into status, sense and Data-In.
Nothing here knows which transport carried the command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from scsi.buffers import Allocator


class Status(IntEnum):
    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class TaskAttribute(IntEnum):
    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


@dataclass(frozen=True, slots=True)
class Nexus:
    """An I_T nexus: who sent a command and through which target port.

    Unit attentions and reservations are kept per nexus. ``initiator_port`` is the
    initiator's SCSI port name (for iSCSI: ``iqn...,i,0x<isid>``); ``transport_id`` is
    the initiator's TransportID as PERSISTENT RESERVE OUT uses it.
    """

    initiator_port: str
    target_port: str = ""
    relative_target_port: int = 1
    initiator_name: str = ""

    @property
    def transport_id(self) -> bytes:
        """iSCSI TransportID (format 00b: name only), padded to a multiple of four bytes."""
        name = (self.initiator_name or self.initiator_port.split(",")[0]).encode() + b"\0"
        name += b"\0" * (-len(name) % 4)
        return bytes([0x05, 0x00]) + len(name).to_bytes(2, "big") + name


class OpenFile(Protocol):
    """An open file whose descriptor may be closed under us (then ``fd`` is -1)."""

    @property
    def fd(self) -> int: ...


@dataclass(frozen=True, slots=True)
class FileRange:
    """Data-In the transport sends straight from a file with sendfile(2), instead of bytes:
    ``length`` bytes of ``file`` at ``offset``. A READ answers with one only when the
    transport asked for it (``ScsiCommand.file_data_in``). The file's descriptor is looked
    up when the bytes are sent, so a file closed meanwhile is noticed, never a reused one.
    """

    file: OpenFile
    offset: int
    length: int
    # Told the READ's hold once it exists (the LU's dispatch calls it): the store whose file
    # this is, so that what writes the file behind the host's back waits for the bytes to be
    # sent (backing.pairs.volume.PairVolume.sending). Slices, the transport's, have none.
    track: Callable[[DataHold], None] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, part: slice) -> FileRange:
        start, stop, _ = part.indices(self.length)
        return FileRange(self.file, self.offset + start, max(0, stop - start))


@dataclass(slots=True)
class ScsiCommand:
    """One SCSI command as the transport hands it over.

    ``data_out`` holds the bytes the initiator sent (the transport's expected data
    transfer length of them) or ``None`` for commands without Data-Out.
    ``data_in_length`` is the most Data-In the transport can carry back (its expected
    transfer length for the read direction); the SCSI layer follows the CDB's own
    allocation/transfer length and the transport reports any residual.
    """

    cdb: bytes
    lun: int
    nexus: Nexus
    data_out: memoryview | None = None
    data_in_length: int = 0
    attribute: TaskAttribute = TaskAttribute.SIMPLE
    tag: int = 0
    # Where large Data-In buffers come from (the transport takes them back once sent).
    # ``data_out`` is only valid until the command completes: it is recycled then too.
    buffers: Allocator | None = None
    # The transport can send a :class:`FileRange` as this command's Data-In (no data
    # digest to compute over it): a large READ may answer with one.
    file_data_in: bool = False

    @property
    def opcode(self) -> int:
        return self.cdb[0]


class DataHold(Protocol):
    """Keeps a READ answered with a :class:`FileRange` in its LU's task set until the
    initiator has the bytes (``scsi.task_set.Hold``)."""

    def release(self) -> None: ...

    def on_wanted(self, nudge: Callable[[], None]) -> None: ...

    def want(self) -> None: ...

    def when_released(self, done: Callable[[], None]) -> None: ...


@dataclass(slots=True)
class ScsiResult:
    """What a command produced.

    ``data`` is the Data-In (the transport clips it to its expected length and reports
    the residual). ``data_out_used`` is how many Data-Out bytes the command consumed,
    when that differs from what the transport delivered; the transport derives the
    underflow/overflow residual from it.
    """

    status: Status = Status.GOOD
    data: bytes | bytearray | memoryview | FileRange | None = None
    sense: bytes | None = None
    data_out_used: int | None = None
    # Set with a FileRange ``data``: the transport releases it once the initiator has
    # acknowledged the status (so has every byte of the data), or the connection is gone.
    hold: DataHold | None = None


__all__ = ["DataHold", "FileRange", "Nexus", "ScsiCommand", "ScsiResult", "Status", "TaskAttribute"]
