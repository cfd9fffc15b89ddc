"""Which /dev node is which LUN: the kernel's SCSI devices as /sys shows them, with the
iSCSI target each came from, so a script can say "LUN 4 of this target" instead of
guessing /dev/sg numbers (they follow scan order, not LUNs)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SYS = Path("/sys")
_TYPES = {0: "disk", 1: "tape", 5: "cd/dvd", 8: "changer", 0xC: "raid", 0xD: "enclosure"}


@dataclass(frozen=True, slots=True)
class ScsiNode:
    hctl: str
    lun: int
    device_type: int
    sg: str  # /dev/sgN, "" if the sg driver is not bound
    block: str  # /dev/sdX, "" for a tape or when sd is not bound
    tape: str  # /dev/nstN, "" unless a tape with st bound
    target: str  # the iSCSI target name, "" for other transports
    vendor: str
    model: str

    @property
    def kind(self) -> str:
        return _TYPES.get(self.device_type, f"type {self.device_type:#x}")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _first(directory: Path, pattern: str = "*") -> str:
    if not directory.is_dir():
        return ""
    names = sorted(p.name for p in directory.glob(pattern))
    return f"/dev/{names[0]}" if names else ""


def scsi_nodes(sys_root: Path = SYS) -> list[ScsiNode]:
    out = []
    for dev in sorted((sys_root / "class" / "scsi_device").glob("*:*:*:*")):
        hctl = dev.name
        device = dev / "device"
        real = os.path.realpath(device)
        session = re.search(r"/(session\d+)/", real)
        target = ""
        if session:
            target = _read(sys_root / "class" / "iscsi_session" / session[1] / "targetname")
        tape = ""
        for t in (
            sorted((device / "scsi_tape").glob("nst*")) if (device / "scsi_tape").is_dir() else []
        ):
            if re.fullmatch(r"nst\d+", t.name):
                tape = f"/dev/{t.name}"
                break
        out.append(
            ScsiNode(
                hctl=hctl,
                lun=int(hctl.rsplit(":", 1)[1]),
                device_type=int(_read(device / "type") or "-1"),
                sg=_first(device / "scsi_generic"),
                block=_first(device / "block"),
                tape=tape,
                target=target,
                vendor=_read(device / "vendor"),
                model=_read(device / "model"),
            )
        )
    return out
