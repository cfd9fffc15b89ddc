"""A tape library over iSCSI with a real daemon: the changer's element status with
barcodes, MOVE MEDIUM into a drive that then reads and writes like any tape, the
refusals that move nothing, and the inventory (with a loaded drive) across a restart."""

from __future__ import annotations

import json
import os
import signal
import time

from conftest import DaemonFactory
from library_targets import library_targets
from pyscsi.pyscsi.scsi_cdb_readelementstatus import ReadElementStatus
from raw_initiator import RawInitiator

IQN = "iqn.2026-11.org.targetd.test:vtl"
CONFIG = library_targets(IQN, capacity="4MiB")
CHANGER, DRIVE_LUN = 0, 1
ROBOT, DRIVE0, MAIL0, SLOT0 = 0x0001, 0x0100, 0x0200, 0x0400
GOOD, CHECK_CONDITION = 0x00, 0x02


def session(port: int) -> RawInitiator:
    ini = RawInitiator(port)
    assert ini.login(IQN).bhs[36] == 0, "login failed"
    ini.clear_unit_attentions(CHANGER)
    for lun in (1, 2):  # TEST UNIT READY of a drive may stay NOT READY: no clearing loop
        assert sense_of(ini.command(bytes(6), lun=lun)) == (0x6, 0x29, 0x00)
    return ini


def move(ini: RawInitiator, src: int, dst: int) -> tuple[int, bytes, bytes]:
    addresses = b"".join(a.to_bytes(2, "big") for a in (ROBOT, src, dst))
    return ini.command(bytes([0xA5, 0]) + addresses + bytes(4), lun=CHANGER)


def inventory(ini: RawInitiator) -> dict[int, str]:
    cdb = bytes([0xB8, 0x10, 0, 0, 0xFF, 0xFF, 0, 0, 0x40, 0, 0, 0])
    status, data, _ = ini.command(cdb, lun=CHANGER, read=0x4000)
    assert status == GOOD
    out = {}
    for page in ReadElementStatus.unmarshall_datain(data)["element_status_pages"]:
        for d in page["element_descriptors"]:
            if d["full"]:
                out[d["element_address"]] = bytes(d["primary_volume_tag"][:32]).decode().strip()
    return out


def sense_of(result: tuple[int, bytes, bytes]) -> tuple[int, int, int]:
    status, _, sense = result
    assert status == CHECK_CONDITION
    return sense[2] & 0x0F, sense[12], sense[13]


def test_library_over_iscsi_moves_loads_refuses_and_restarts(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(CONFIG)
    with session(daemon.port) as ini:
        status, inquiry, _ = ini.command(bytes([0x12, 0, 0, 0, 96, 0]), lun=CHANGER, read=96)
        assert status == GOOD and inquiry[0] == 0x08
        assert inquiry[16:32] == b"VIRTUAL-CHANGER "
        status, page, _ = ini.command(bytes([0x1A, 0x08, 0x1D, 0, 255, 0]), lun=CHANGER, read=255)
        assert status == GOOD and page[4:8] == b"\x1d\x12\x00\x01"
        assert inventory(ini) == {SLOT0: "TD0001L6", SLOT0 + 1: "TD0002L6"}
        tur = bytes(6)
        assert sense_of(ini.command(tur, lun=DRIVE_LUN)) == (0x2, 0x3A, 0x00)
        assert move(ini, SLOT0 + 1, DRIVE0)[0] == GOOD
        assert sense_of(ini.command(tur, lun=DRIVE_LUN)) == (0x6, 0x28, 0x00)
        assert ini.command(tur, lun=DRIVE_LUN)[0] == GOOD
        record = b"backup" * 1000
        write = bytes([0x0A, 0]) + len(record).to_bytes(3, "big") + b"\0"
        assert ini.command(write, lun=DRIVE_LUN, data=record)[0] == GOOD
        assert ini.command(bytes([0x10, 0, 0, 0, 1, 0]), lun=DRIVE_LUN)[0] == GOOD
        # refusals: a full destination, an empty source, a locked drive; nothing moves
        assert sense_of(move(ini, SLOT0, DRIVE0)) == (0x5, 0x3B, 0x0D)
        assert sense_of(move(ini, SLOT0 + 2, SLOT0 + 3)) == (0x5, 0x3B, 0x0E)
        assert ini.command(bytes([0x1E, 0, 0, 0, 1, 0]), lun=DRIVE_LUN)[0] == GOOD
        assert sense_of(move(ini, DRIVE0, SLOT0 + 3)) == (0x5, 0x53, 0x02)
        assert inventory(ini) == {DRIVE0: "TD0002L6", SLOT0: "TD0001L6"}
        assert ini.command(tur, lun=DRIVE_LUN)[0] == GOOD
        assert ini.command(bytes([0x1E, 0, 0, 0, 0, 0]), lun=DRIVE_LUN)[0] == GOOD
    inv = json.loads((daemon.state_dir / "vtl" / "inventory.json").read_text())
    assert inv["elements"]["0100"] == {"barcode": "TD0002L6", "source": SLOT0 + 1}
    daemon.restart()
    with session(daemon.port) as ini:
        assert ini.command(bytes(6), lun=DRIVE_LUN)[0] == GOOD  # loaded again
        assert inventory(ini) == {DRIVE0: "TD0002L6", SLOT0: "TD0001L6"}
        read = bytes([0x08, 0]) + len(record).to_bytes(3, "big") + b"\0"
        assert ini.command(read, lun=DRIVE_LUN, read=len(record)) == (GOOD, record, b"")
        assert move(ini, DRIVE0, MAIL0)[0] == GOOD  # out through the mail slot
        assert sense_of(ini.command(bytes(6), lun=DRIVE_LUN)) == (0x2, 0x3A, 0x00)
        assert inventory(ini) == {MAIL0: "TD0002L6", SLOT0: "TD0001L6"}


def test_targetctl_library_lists_imports_and_exports(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    with session(daemon.port) as ini:
        listing = daemon.targetctl("library", "list")
        assert listing.returncode == 0, listing.stderr
        lines = listing.stdout.splitlines()
        assert lines[0] == f"library {IQN} lun 0"
        assert any(line.split()[:3] == ["0x400", "storage", "TD0001L6"] for line in lines)
        made = daemon.targetctl("library", "import", "NEW001L6")
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip() == "NEW001L6: in mail slot 0x200"
        assert (daemon.state_dir / "vtl" / "NEW001L6.img").is_file()
        # the initiator learns of it, then sees the cartridge in the mail slot
        assert sense_of(ini.command(bytes(6), lun=CHANGER)) == (0x6, 0x28, 0x01)
        assert inventory(ini)[MAIL0] == "NEW001L6"
        full = daemon.targetctl("library", "import", "NEW002L6")
        assert full.returncode == 1 and "every mail slot is full" in full.stderr
        # the initiator locks the door: the operator can take nothing out
        assert ini.command(bytes([0x1E, 0, 0, 0, 1, 0]), lun=CHANGER)[0] == GOOD
        locked = daemon.targetctl("library", "export", "NEW001L6")
        assert locked.returncode == 1 and "locked" in locked.stderr
        assert ini.command(bytes([0x1E, 0, 0, 0, 0, 0]), lun=CHANGER)[0] == GOOD
        out = daemon.targetctl("library", "export", "NEW001L6", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["image"].endswith("vtl/exported/NEW001L6.img")
        assert sense_of(ini.command(bytes(6), lun=CHANGER)) == (0x6, 0x28, 0x01)
        assert MAIL0 not in inventory(ini)


def test_targetctl_library_tag_gives_an_alternate_volume_tag(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(CONFIG)
    with session(daemon.port) as ini:
        tagged = daemon.targetctl("library", "tag", "TD0001L6", "--alternate", "TD0001-B")
        assert tagged.returncode == 0, tagged.stderr
        assert tagged.stdout.strip() == "TD0001L6: alternate volume tag TD0001-B"
        cdb = bytes([0xB8, 0x12, 0, 0, 0, 2, 0, 0, 0x40, 0, 0, 0])  # two slots, VOLTAG
        status, data, _ = ini.command(cdb, lun=CHANGER, read=0x4000)
        assert status == GOOD
        (page,) = ReadElementStatus.unmarshall_datain(data)["element_status_pages"]
        assert page["pvoltag"] and page["avoltag"]
        first, second = page["element_descriptors"]
        assert bytes(first["alternate_volume_tag"][:32]).decode().strip() == "TD0001-B"
        assert bytes(second["alternate_volume_tag"]) == bytes(36)
        listing = daemon.targetctl("library", "list")
        (row,) = [line for line in listing.stdout.splitlines() if "TD0001L6" in line]
        assert row.split()[:3] == ["0x400", "storage", "TD0001L6"]
        assert row.endswith("alternate TD0001-B")
        unknown = daemon.targetctl("library", "tag", "NOPE01L6", "--alternate", "X")
        assert unknown.returncode == 1 and "not in the library" in unknown.stderr
        cleared = daemon.targetctl("library", "tag", "TD0001L6", "--clear", "--json")
        assert json.loads(cleared.stdout) == {"alternate": None, "barcode": "TD0001L6"}
        status, data, _ = ini.command(cdb, lun=CHANGER, read=0x4000)
        (page,) = ReadElementStatus.unmarshall_datain(data)["element_status_pages"]
        assert not page["avoltag"]


def test_a_library_added_by_sighup_is_served(targetd_factory: DaemonFactory) -> None:
    disk = '[[target.lun]]\nlun = 9\nsize = "8MiB"\n'
    daemon = targetd_factory(f'[[target]]\nname = "{IQN}"\n' + disk)
    assert daemon.config is not None and daemon.proc is not None
    daemon.config.write_text(CONFIG + disk)
    os.kill(daemon.proc.pid, signal.SIGHUP)
    marker = f'change="target {IQN}: lun 2 added"'
    deadline = time.monotonic() + 10
    while marker not in daemon.stderr and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker in daemon.stderr, daemon.stderr
    assert "reload not applied" not in daemon.stderr
    with session(daemon.port) as ini:
        assert inventory(ini) == {SLOT0: "TD0001L6", SLOT0 + 1: "TD0002L6"}
        assert move(ini, SLOT0, DRIVE0)[0] == GOOD
        assert sense_of(ini.command(bytes(6), lun=DRIVE_LUN)) == (0x6, 0x28, 0x00)
        assert ini.command(bytes(6), lun=DRIVE_LUN)[0] == GOOD
