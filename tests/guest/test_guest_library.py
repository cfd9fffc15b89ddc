"""A tape library under Linux in a QEMU guest: mtx on the changer; tapeinfo, mt, dd and tar
on a drive; Bacula's mtx-changer and btape's test and autochanger runs."""

from __future__ import annotations

import re

from conftest import DaemonFactory
from guest_vm import GUEST_DIR, run_guest, start_for_guest

LIBRARY_TARGETS = """\
[[target]]
name = "iqn.2026-11.org.targetd:default"
[[target.lun]]
lun = 0
kind = "changer"
path = "vtl"
slots = 4
mail_slots = 1
capacity = "64MiB"
tapes = ["TD0001L6", "TD0002L6"]
[[target.lun]]
lun = 1
kind = "tape"
changer = 0
[[target.lun]]
lun = 2
kind = "tape"
changer = 0
"""

CHECKS = [
    "identification", "status", "inventory", "load", "tapeinfo", "mt_dd", "tar", "unload",
    "transfer", "refusals", "exchange", "mail_slot", "mtx_changer", "btape_test",
    "btape_autochanger",
]  # fmt: skip


def verdicts(console: str) -> dict[str, str]:
    return dict(re.findall(r"^@@verdict (\w+) (pass|fail)\s*$", console, re.MULTILINE))


def test_guest_library_with_mtx_and_btape(targetd_factory: DaemonFactory) -> None:
    daemon = start_for_guest(targetd_factory, LIBRARY_TARGETS)
    out = run_guest(GUEST_DIR / "library.sh", daemon, timeout=600)
    assert verdicts(out) == dict.fromkeys(CHECKS, "pass")
    assert "library: all steps passed" in out
