"""EXTENDED COPY and RECEIVE COPY RESULTS: the copy manager of a SCSI target.

``services(...)`` makes the copy services of one target: a :class:`CopyManager`, the
commands (``xcopy.commands.COPY_COMMANDS``) and VPD page 8Fh. Each LU of the target is
given them when it is built (``BlockDevice(..., services=...)``); the LU then sets the
INQUIRY 3PC bit, serves the commands and has the page. Nothing is registered on import
and nothing is patched onto a LU afterwards.
"""

from __future__ import annotations

from pathlib import Path

from scsi.command import Nexus
from scsi.logical_unit import LogicalUnit, Services
from xcopy.commands import COPY_COMMANDS
from xcopy.journal import CopyJournal
from xcopy.manager import CopyManager, Operation, State
from xcopy.policies import Policy, PolicyLookup, default_policy, pair_aware_readers
from xcopy.readers import DirectReader, ReaderFactory, SourceReader, direct_reader
from xcopy.results import third_party_copy_page

THIRD_PARTY_COPY_PAGE = 0x8F


def _tpc_page(lu: LogicalUnit, nexus: Nexus) -> bytes:
    return third_party_copy_page(lu.device_type)


def services(
    policy_for: PolicyLookup = default_policy,
    *,
    state_dir: Path | None = None,
    manager: CopyManager | None = None,
) -> Services:
    """The copy services of one target, for each of its LUs as it is built.

    The copy manager reaches the LUs of the target the EXTENDED COPY was sent through
    (its LUN map); a copy from a pair's target volume follows the backup policy
    ``policy_for(pair)`` unless its SPLIT PAIR segment names one. With ``state_dir``
    copy results survive a restart (an interrupted copy reads as failed). ``manager``
    replaces the default manager (tests give one with their own reader factory)."""
    if manager is None:
        journal = CopyJournal(state_dir) if state_dir is not None else None
        manager = CopyManager(pair_aware_readers(policy_for), journal=journal)
    return Services(
        commands=COPY_COMMANDS,
        vpd_pages={THIRD_PARTY_COPY_PAGE: _tpc_page},
        copy_manager=manager,
    )


__all__ = [
    "COPY_COMMANDS",
    "CopyManager",
    "DirectReader",
    "Operation",
    "Policy",
    "PolicyLookup",
    "ReaderFactory",
    "SourceReader",
    "State",
    "direct_reader",
    "services",
]
