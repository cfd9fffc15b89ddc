"""A tape library under Linux in a QEMU guest: mtx on the changer; tapeinfo, mt, dd and tar
on a drive; Bacula's mtx-changer and btape's test and autochanger runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Daemon, DaemonFactory
from guest_vm import GUEST_DIR, HOST_FROM_GUEST, run_guest, start_for_guest
from library_targets import library_targets
from test_guest_tape import TgtTape, running

LIBRARY_TARGETS = library_targets("iqn.2026-11.org.targetd:default", capacity="64MiB")

CHECKS = [
    "identification", "status", "inventory", "position", "load", "tapeinfo", "mt_dd", "tar",
    "unload", "transfer", "refusals", "exchange", "mail_slot", "mtx_changer", "btape_test",
    "btape_autochanger", "operator_import", "alternate_tag",
]  # fmt: skip


# What tgt's VTL does with each check (recorded in docs/tape.md): it has no POSITION TO
# ELEMENT and no EXCHANGE MEDIUM (INVALID COMMAND OPERATION CODE), and btape's append test
# fails: after MTEOM st knows no file number, and with btape's fallbacks the tape holds 5
# files where 4 were written; it has no alternate volume tags.
TGT_VERDICTS = dict.fromkeys(CHECKS, "pass") | {
    "position": "fail",
    "exchange": "fail",
    "btape_test": "fail",
    "alternate_tag": "fail",
}


def verdicts(console: str) -> dict[str, str]:
    return dict(re.findall(r"^@@verdict (\w+) (pass|fail)\s*$", console, re.MULTILINE))


def targetctl_library(daemon: Daemon, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "targetd.ctl", "library", *args, "--state-dir",
         str(daemon.state_dir)],
        cwd=REPO, check=True, capture_output=True, timeout=60,
    )  # fmt: skip


# btape's test writes and reads 20,000 blocks through the emulated guest: about 90 s on a
# quiet machine, 250 s at a load average of 14.
@pytest.mark.timeout(900)
def test_guest_library_with_mtx_and_btape(targetd_factory: DaemonFactory) -> None:
    daemon = start_for_guest(targetd_factory, LIBRARY_TARGETS)
    actions = {
        "import-NEW001L6": lambda: targetctl_library(daemon, "import", "NEW001L6"),
        "tag-NEW001L6": lambda: targetctl_library(
            daemon, "tag", "NEW001L6", "--alternate", "NEW001-B"
        ),
    }
    out = run_guest(GUEST_DIR / "library.sh", daemon, actions=actions, timeout=800)
    assert verdicts(out) == dict.fromkeys(CHECKS, "pass")
    assert "library: all steps passed" in out


TGT_VTL_IQN = "iqn.2026-11.org.targetd.anchor:tgt-vtl"


class TgtLibrary(TgtTape):
    """tgt's virtual tape library (README.vtl), laid out as the targetd library above:
    drives at LUN 1 and 2 (tgt keeps LUN 0 for its controller), the changer at LUN 3, 4
    slots holding TD0001L6 and TD0002L6, 1 mail slot."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.iqn = TGT_VTL_IQN

    def start(self) -> TgtLibrary:
        media = self.workdir / "vtl"
        media.mkdir()
        for barcode in ("TD0001L6", "TD0002L6", "DRIVE1", "DRIVE2"):
            subprocess.run(
                ["tgtimg", "--op", "new", "--device-type", "tape", "--barcode", barcode,
                 "--size", "64", "--type", "data", f"--file={media / barcode}"],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
        (media / "smc").write_bytes(bytes(1024))
        self.start_daemon()
        self.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", self.iqn)
        lu = ("--mode", "logicalunit", "--tid", "1")
        for drive in (1, 2):  # a drive is made with a tape, then taken offline (empty)
            self.adm("--op", "new", *lu, "--lun", str(drive), "--device-type", "tape",
                     "--bstype", "ssc", "-b", str(media / f"DRIVE{drive}"))  # fmt: skip
            self.adm("--op", "update", *lu, "--lun", str(drive), "--params", "online=0")
        self.adm("--op", "new", *lu, "--lun", "3", "--device-type", "changer",
                 "-b", str(media / "smc"))  # fmt: skip
        for params in (
            f"media_home={media}",
            "element_type=4,start_address=1,quantity=2",
            "element_type=4,address=1,tid=1,lun=1",
            "element_type=4,address=2,tid=1,lun=2",
            "element_type=1,start_address=3,quantity=1",
            "element_type=2,start_address=4,quantity=4",
            "element_type=3,start_address=8,quantity=1",
            "element_type=2,address=4,barcode=TD0001L6,sides=1",
            "element_type=2,address=5,barcode=TD0002L6,sides=1",
        ):
            self.adm("--op", "update", *lu, "--lun", "3", "--params", params)
        self.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        return self

    def import_cartridge(self, barcode: str) -> None:
        """The operator's import: a new tape in the mail slot (element 8)."""
        subprocess.run(
            ["tgtimg", "--op", "new", "--device-type", "tape", "--barcode", barcode,
             "--size", "64", "--type", "data", f"--file={self.workdir / 'vtl' / barcode}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.adm("--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "3",
                 "--params", f"element_type=3,address=8,barcode={barcode},sides=1")  # fmt: skip


def tgt_has_no_alternate_tags() -> None:
    raise RuntimeError("tgt's changer has no alternate volume tags")


@pytest.mark.timeout(900)
def test_guest_library_tgt_anchor(tmp_path: Path) -> None:
    """The anchor: tgt's VTL through the same checks in the same guest; its verdicts are
    the ones docs/tape.md records."""
    with running(TgtLibrary(tmp_path)) as tgt:
        out = run_guest(
            GUEST_DIR / "library.sh",
            tgt,  # type: ignore[arg-type]
            env={
                "CHANGER_LUN": "3",
                "DRIVE_LUN": "1",
                "LOGIN": "direct",
                "TARGET_PORTAL": f"{HOST_FROM_GUEST}:{tgt.port}",
                "VERDICTS_ONLY": "1",
            },
            actions={
                "import-NEW001L6": lambda: tgt.import_cartridge("NEW001L6"),
                "tag-NEW001L6": tgt_has_no_alternate_tags,
            },
            timeout=800,
        )
    assert verdicts(out) == TGT_VERDICTS, out
