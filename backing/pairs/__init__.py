"""Volume pairs: a source volume mirrored onto a target volume, split at once on request.

:class:`PairService` (``backing.pairs.service``) is THE entry point for every caller: the
vendor SCSI commands, targetctl and EXTENDED COPY. See docs/pairs.md for the design.
"""

from backing.pairs.engine import Pair, PairSettings, PairStatus
from backing.pairs.manager import PairManager
from backing.pairs.service import UNCHECKED, Access, PairService, SplitImage
from backing.pairs.states import (
    BackupPolicy,
    ErrorCode,
    PairError,
    Phase,
    SuspendReason,
    VolumeState,
)
from backing.pairs.volume import MAX_SECONDARIES, PairVolume, Role, VolumeWriteProtected

__all__ = [
    "MAX_SECONDARIES",
    "UNCHECKED",
    "Access",
    "BackupPolicy",
    "ErrorCode",
    "Pair",
    "PairError",
    "PairManager",
    "PairService",
    "PairSettings",
    "PairStatus",
    "PairVolume",
    "Phase",
    "Role",
    "SplitImage",
    "SuspendReason",
    "VolumeState",
    "VolumeWriteProtected",
]
