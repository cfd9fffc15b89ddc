"""EXTENDED COPY and RECEIVE COPY RESULTS: the copy manager of a SCSI target.

``attach(target)`` gives every LU of a :class:`scsi.target.ScsiTarget` one shared
:class:`CopyManager` over the target's LUN map (the LUs its sessions may see), sets the
INQUIRY 3PC bit and offers VPD page 8Fh; importing ``xcopy.commands`` (done here) puts the
commands in the SBC and SSC opcode tables.
"""

from __future__ import annotations

from pathlib import Path

from scsi.command import Nexus
from scsi.logical_unit import LogicalUnit
from scsi.target import ScsiTarget
from scsi.vpd import EXTRA_PAGES
from xcopy import commands
from xcopy.journal import CopyJournal
from xcopy.manager import CopyManager, Operation, State
from xcopy.policies import Policy, PolicyLookup, default_policy, pair_aware_readers
from xcopy.readers import DirectReader, ReaderFactory, SourceReader, direct_reader
from xcopy.results import third_party_copy_page


def _tpc_page(lu: LogicalUnit, nexus: Nexus) -> bytes | None:
    if not getattr(lu, "third_party_copy", False):
        return None
    return third_party_copy_page(lu.device_type)


EXTRA_PAGES[0x8F] = _tpc_page


def attach(
    target: ScsiTarget,
    policy_for: PolicyLookup = default_policy,
    *,
    state_dir: Path | None = None,
) -> CopyManager:
    """One copy manager for ``target``; a copy from a pair's target volume follows the
    backup policy ``policy_for(pair)`` unless its SPLIT PAIR segment names one. With
    ``state_dir`` copy results survive a restart (an interrupted copy reads as failed)."""
    journal = CopyJournal(state_dir) if state_dir is not None else None
    manager = CopyManager(target.luns, pair_aware_readers(policy_for), journal=journal)
    for lu in target.luns.values():
        lu.copy_manager = manager
        lu.third_party_copy = True
    return manager


__all__ = [
    "CopyManager",
    "DirectReader",
    "Operation",
    "Policy",
    "PolicyLookup",
    "ReaderFactory",
    "SourceReader",
    "State",
    "attach",
    "commands",
    "direct_reader",
]
