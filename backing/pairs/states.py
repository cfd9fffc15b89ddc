"""Pair states as split-mirror arrays name them, and the transitions between them, as data.

A pair has one *phase*; each phase shows a state for the source volume and one for the
target volume, kept apart because the two sides leave a split at different moments: the
source of a split pair is SPLIT at once while its target is SPLIT-PENDING until the
split-instant differential is reflected. Anything not in :data:`TRANSITIONS` is an
illegal request and raises :class:`PairError` with code ``WRONG_STATE``.
"""

from __future__ import annotations

import re
from enum import Enum, IntEnum

# Pair and group names (the vendor commands, targetctl and the configuration take these).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


class VolumeState(IntEnum):
    """One volume's state; the value is its code in the vendor status data."""

    SIMPLEX = 0x00
    DUPLEX_PENDING = 0x01  # creation copy (or update copies after create) running
    DUPLEX = 0x02
    SPLIT_PENDING = 0x03
    SPLIT = 0x04
    SUSPENDED = 0x05
    RESYNC = 0x06
    DELETE = 0x07
    REVERSE_COPY = 0x08  # reverse resync: the source is being restored from the target

    @property
    def label(self) -> str:
        return self.name.replace("_", "-")


class Phase(Enum):
    """The pair's phase: (source state, target state)."""

    DUPLEX_PENDING = (VolumeState.DUPLEX_PENDING, VolumeState.DUPLEX_PENDING)
    DUPLEX = (VolumeState.DUPLEX, VolumeState.DUPLEX)
    SPLIT_PENDING = (VolumeState.SPLIT, VolumeState.SPLIT_PENDING)
    SPLIT = (VolumeState.SPLIT, VolumeState.SPLIT)
    SUSPENDED = (VolumeState.SUSPENDED, VolumeState.SUSPENDED)
    RESYNC = (VolumeState.RESYNC, VolumeState.RESYNC)
    DELETE = (VolumeState.DELETE, VolumeState.DELETE)
    REVERSE_COPY = (VolumeState.REVERSE_COPY, VolumeState.REVERSE_COPY)

    @property
    def source(self) -> VolumeState:
        return self.value[0]

    @property
    def target(self) -> VolumeState:
        return self.value[1]

    @property
    def mirroring(self) -> bool:
        """Host writes to the source are mirrored (tracked in the copy set)."""
        return self in MIRRORING

    @property
    def target_writable(self) -> bool:
        """Hosts may write the target volume (it is a point-in-time copy, not a mirror)."""
        return self in (Phase.SPLIT_PENDING, Phase.SPLIT, Phase.SUSPENDED)

    @property
    def source_fenced(self) -> bool:
        """Hosts may not write the source: a reverse resync is restoring it."""
        return self is Phase.REVERSE_COPY


MIRRORING = frozenset({Phase.DUPLEX_PENDING, Phase.DUPLEX, Phase.RESYNC})


class Event(Enum):
    COPY_DONE = "copy-done"  # the copy set became empty
    SPLIT = "split"
    REFLECTED = "reflected"  # the split-instant set is on the target
    RESYNC = "resync"
    FAIL = "fail"  # a copy failed: SUSPENDED with a reason
    DELETE = "delete"
    REVERSE = "reverse-resync"  # restore the source from the target


# (phase, event) -> next phase. Creation (SIMPLEX -> DUPLEX-PENDING) and the end of DELETE
# (-> SIMPLEX) create and remove the pair itself, so they are not rows here.
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.DUPLEX_PENDING, Event.COPY_DONE): Phase.DUPLEX,
    (Phase.RESYNC, Event.COPY_DONE): Phase.DUPLEX,
    (Phase.DUPLEX, Event.COPY_DONE): Phase.DUPLEX,
    # Reverse resync: only a SPLIT target holds a whole image to restore the source from.
    (Phase.SPLIT, Event.REVERSE): Phase.REVERSE_COPY,
    (Phase.REVERSE_COPY, Event.COPY_DONE): Phase.DUPLEX,
    (Phase.REVERSE_COPY, Event.FAIL): Phase.SUSPENDED,
    # A split of a pair still copying is a "quick split": the split set is simply larger.
    (Phase.DUPLEX_PENDING, Event.SPLIT): Phase.SPLIT_PENDING,
    (Phase.DUPLEX, Event.SPLIT): Phase.SPLIT_PENDING,
    (Phase.RESYNC, Event.SPLIT): Phase.SPLIT_PENDING,
    (Phase.SPLIT_PENDING, Event.REFLECTED): Phase.SPLIT,
    (Phase.SPLIT_PENDING, Event.RESYNC): Phase.RESYNC,
    (Phase.SPLIT, Event.RESYNC): Phase.RESYNC,
    (Phase.SUSPENDED, Event.RESYNC): Phase.RESYNC,
    (Phase.DUPLEX_PENDING, Event.FAIL): Phase.SUSPENDED,
    (Phase.DUPLEX, Event.FAIL): Phase.SUSPENDED,
    (Phase.RESYNC, Event.FAIL): Phase.SUSPENDED,
    (Phase.SPLIT_PENDING, Event.FAIL): Phase.SUSPENDED,
    # Nothing copies in SPLIT, but its changed-chunk bitmaps can still fail to be written.
    (Phase.SPLIT, Event.FAIL): Phase.SUSPENDED,
    (Phase.SUSPENDED, Event.FAIL): Phase.SUSPENDED,
    **{(phase, Event.DELETE): Phase.DELETE for phase in Phase if phase is not Phase.DELETE},
}


class ErrorCode(Enum):
    """Why a pair operation was refused; the SCSI layer maps each to its sense."""

    UNKNOWN_PAIR = "unknown-pair"
    UNKNOWN_VOLUME = "unknown-volume"
    WRONG_STATE = "wrong-state"
    SIZE_MISMATCH = "size-mismatch"
    VOLUME_IN_PAIR = "volume-in-pair"
    SAME_VOLUME = "same-volume"
    NAME_IN_USE = "name-in-use"
    BAD_NAME = "bad-name"
    READ_ONLY_VOLUME = "read-only-volume"
    BAD_POLICY = "bad-policy"
    AMBIGUOUS_NAME = "ambiguous-name"  # one name in several scopes: say which
    RESERVATION_CONFLICT = "reservation-conflict"  # a volume it touches is reserved
    UNKNOWN_GROUP = "unknown-group"
    IN_GROUP = "in-group"  # the pair is in another consistency group
    ELSEWHERE = "elsewhere"  # the other gateway runs the pair and keeps its volume's lock
    TOO_MANY_SECONDARIES = "too-many-secondaries"  # the primary has 3 pairs already
    AMBIGUOUS_VOLUME = "ambiguous-volume"  # a primary of several pairs: name the secondary


class PairError(Exception):
    """A refused pair operation, with its :class:`ErrorCode`."""

    def __init__(self, code: ErrorCode, message: str, *, phase: Phase | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.phase = phase


class BackupPolicy(IntEnum):
    """How an EXTENDED COPY backs up the target volume of this pair while the split-instant
    image is not all on it yet (docs/xcopy.md). The value is its code in PAIR OUT SET
    BACKUP POLICY, the PAIR IN status data and the SPLIT PAIR segment. The engine only
    keeps it (with the pair, across restarts); the copy manager acts on it."""

    REFLECT_FIRST = 0x01  # reflect the range's pending chunks first, then read the target
    WAIT = 0x02  # wait until the pair is SPLIT
    MERGE = 0x03  # read pending chunks from the source, merged into the stream
    SPLIT_AND_BACKUP = 0x04  # a backup of a mirroring pair splits it first (then reflect-first)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str) -> BackupPolicy:
        """``reflect-first``, ``REFLECT_FIRST``, ``1``: one policy; ValueError otherwise."""
        key = text.strip().upper().replace("-", "_")
        if key.isdigit() and int(key) in cls._value2member_map_:
            return cls(int(key))
        try:
            return cls[key]
        except KeyError:
            names = ", ".join(p.label for p in cls)
            raise ValueError(f"unknown backup policy {text!r} (one of {names})") from None


class SuspendReason(IntEnum):
    """Why a pair is SUSPENDED (reported in the status data)."""

    NONE = 0x00
    SOURCE_READ_ERROR = 0x01
    TARGET_WRITE_ERROR = 0x02
    OPERATOR = 0x03
    PAIR_FILE_ERROR = 0x04  # the pair's own file (bitmaps, header) could not be written
    INTERNAL_ERROR = 0x05  # anything else a copy worker met (a bug): see the log


def next_phase(phase: Phase, event: Event) -> Phase:
    """The phase after ``event``, or :class:`PairError` (``WRONG_STATE``) if illegal."""
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        raise PairError(
            ErrorCode.WRONG_STATE,
            f"cannot {event.value} a pair that is {phase.source.label}/{phase.target.label}",
            phase=phase,
        ) from None
