"""Volume pairs: a source volume mirrored onto a target volume, split at once on request.

:class:`PairManager` is the API; see docs/pairs.md for the design and the SCSI commands.
"""

from backing.pairs.engine import Pair, PairSettings, PairStatus
from backing.pairs.manager import PairManager
from backing.pairs.states import (
    BackupPolicy,
    ErrorCode,
    PairError,
    Phase,
    SuspendReason,
    VolumeState,
)
from backing.pairs.volume import PairVolume, Role, VolumeWriteProtected

__all__ = [
    "BackupPolicy",
    "ErrorCode",
    "Pair",
    "PairError",
    "PairManager",
    "PairSettings",
    "PairStatus",
    "PairVolume",
    "Phase",
    "Role",
    "SuspendReason",
    "VolumeState",
    "VolumeWriteProtected",
]
