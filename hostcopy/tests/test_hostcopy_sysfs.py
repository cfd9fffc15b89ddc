"""`targetd-copy devices` reads the LUN-to-node mapping from /sys: a fake tree laid out as
the kernel lays out an iSCSI session's disks and tape."""

from __future__ import annotations

import os
from pathlib import Path

from hostcopy.sysfs import scsi_nodes

IQN = "iqn.2026-11.org.targetd:backup"


def fake_sys(root: Path) -> Path:
    session = root / "devices/platform/host2/session1"
    (root / "class/iscsi_session/session1").mkdir(parents=True)
    (root / "class/iscsi_session/session1/targetname").write_text(IQN + "\n")
    (root / "class/scsi_device").mkdir(parents=True)
    for lun, kind, sg, extra in ((0, 0, "sg0", "block/sda"), (4, 1, "sg4", "scsi_tape/nst0"),
                                 (1, 0, "sg1", "block/sdb")):  # fmt: skip
        dev = session / f"target2:0:0/2:0:0:{lun}"
        (dev / "scsi_generic" / sg).mkdir(parents=True)
        (dev / extra).mkdir(parents=True)
        if kind == 1:
            for alias in ("nst0a", "nst0l", "st0"):
                (dev / "scsi_tape" / alias).mkdir()
        (dev / "type").write_text(f"{kind}\n")
        (dev / "vendor").write_text("TARGETD \n")
        (dev / "model").write_text("VIRTUAL-DISK\n")
        link = root / f"class/scsi_device/2:0:0:{lun}"
        link.mkdir()
        os.symlink(dev, link / "device")
    return root


def test_luns_map_to_their_nodes_and_target(tmp_path: Path) -> None:
    nodes = {n.lun: n for n in scsi_nodes(fake_sys(tmp_path))}
    assert sorted(nodes) == [0, 1, 4]
    assert (nodes[0].sg, nodes[0].block, nodes[0].tape) == ("/dev/sg0", "/dev/sda", "")
    assert (nodes[4].sg, nodes[4].block, nodes[4].tape) == ("/dev/sg4", "", "/dev/nst0")
    assert nodes[4].kind == "tape" and nodes[1].kind == "disk"
    assert {n.target for n in nodes.values()} == {IQN}
    assert nodes[1].hctl == "2:0:0:1" and nodes[0].vendor == "TARGETD"


def test_no_scsi_devices_is_an_empty_list(tmp_path: Path) -> None:
    assert scsi_nodes(tmp_path) == []
