"""The media changer (SMC-3) and its drives, sans-I/O: element model, command handlers,
the inventory kept across a restart, and the refusals that move nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pyscsi.pyscsi.scsi_cdb_readelementstatus import ReadElementStatus

from backing.tape_library import LibraryError, TapeDirectory
from scsi.changer_device import MediaChanger, TapeLibrary
from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import Identity, LogicalUnit
from scsi.sense import CheckCondition, Reason
from scsi.smc_elements import Elements, ElementType, Names
from scsi.tape_device import TapeDevice

NEXUS = Nexus("iqn.2026-11.org.test:i,i,0x1")
OTHER = Nexus("iqn.2026-11.org.test:j,i,0x1")
ILLEGAL_REQUEST, NOT_READY, UNIT_ATTENTION, HARDWARE_ERROR = 0x5, 0x2, 0x6, 0x4
SLOT0, MAIL0, DRIVE0, DRIVE1, ROBOT = 0x0400, 0x0200, 0x0100, 0x0101, 0x0001


def run(lu: LogicalUnit, cdb: bytes, data: bytes | None = None, nexus: Nexus = NEXUS) -> ScsiResult:
    cmd = ScsiCommand(
        cdb, 0, nexus, data_out=None if data is None else memoryview(data), data_in_length=1 << 20
    )
    return asyncio.run(lu.execute(cmd))


def good(result: ScsiResult) -> ScsiResult:
    assert result.status == Status.GOOD, result.sense
    return result


def sense(result: ScsiResult) -> tuple[int, int, int]:
    assert result.status == Status.CHECK_CONDITION, result
    s = result.sense
    assert s is not None
    return s[2] & 0x0F, s[12], s[13]


def build(
    tmp_path: Path, tapes: tuple[str, ...] = ("A00001L6", "A00002L6")
) -> tuple[MediaChanger, list[TapeDevice]]:
    library = TapeLibrary(
        TapeDirectory(tmp_path / "lib", 1 << 20), slots=4, mail_slots=1, drives=2, tapes=tapes
    )
    changer = MediaChanger(Identity("t/lun0", product="VIRTUAL-CHANGER"), library)
    drives = []
    for i in range(2):
        drive = TapeDevice(Identity(f"t/lun{i + 1}", product="VIRTUAL-TAPE"), None)
        library.attach_drive(i, drive)
        drives.append(drive)
    return changer, drives


def move(lu: MediaChanger, src: int, dst: int, transport: int = ROBOT) -> ScsiResult:
    cdb = bytes([0xA5, 0]) + b"".join(a.to_bytes(2, "big") for a in (transport, src, dst))
    return run(lu, cdb + bytes(4))


def res(lu: MediaChanger, kind: int = 0, *, voltag: bool = True, dvcid: bool = False) -> dict:
    cdb = bytes([0xB8, (0x10 if voltag else 0) | kind, 0, 0, 0xFF, 0xFF, int(dvcid)])
    data = good(run(lu, cdb + (0xFFFF).to_bytes(3, "big") + bytes(2))).data
    assert data is not None
    return ReadElementStatus.unmarshall_datain(bytes(data))


def barcodes(status: dict) -> dict[int, str]:
    """Element address to barcode, of the full elements a READ ELEMENT STATUS reported."""
    out = {}
    for page in status["element_status_pages"]:
        for d in page["element_descriptors"]:
            if d["full"]:
                out[d["element_address"]] = bytes(d["primary_volume_tag"][:32]).decode().strip()
    return out


def tur(lu: LogicalUnit, nexus: Nexus = NEXUS) -> ScsiResult:
    return run(lu, bytes(6), nexus=nexus)


# -- the element model -------------------------------------------------------------------
def test_elements_have_typed_addresses_and_moves_remember_their_slot() -> None:
    e = Elements(slots=3, mail_slots=1, drives=1)
    assert [x.address for x in e.of_type(ElementType.ALL)] == [1, 0x100, 0x200, 0x400, 0x401, 0x402]
    e.place("T1", ElementType.STORAGE)
    src, dst = e.named(SLOT0, Names.HOLDER), e.named(DRIVE0, Names.HOLDER)
    e.check_move(src, dst)
    e.move(src, dst)
    assert e.get(DRIVE0).barcode == "T1" and e.get(DRIVE0).source == SLOT0
    e.move(e.get(DRIVE0), e.get(0x402))
    assert e.get(0x402).source == SLOT0 and not e.get(SLOT0).full  # back to its home slot
    assert e.named(0, Names.TRANSPORT) is e.named(ROBOT, Names.TRANSPORT) is e.get(ROBOT)
    assert e.named(ROBOT, Names.ANY) is e.get(ROBOT)
    for address, names in (
        (0x999, Names.HOLDER),
        (0x999, Names.ANY),
        (0x400, Names.TRANSPORT),  # not a transport
        (ROBOT, Names.HOLDER),  # the robot holds nothing
    ):
        with pytest.raises(CheckCondition) as err:
            e.named(address, names)
        assert err.value.reason is Reason.INVALID_ELEMENT_ADDRESS
    with pytest.raises(CheckCondition) as err:
        e.check_move(e.get(0x401), e.get(DRIVE0))
    assert err.value.reason is Reason.MEDIUM_SOURCE_ELEMENT_EMPTY
    e.place("T2", ElementType.STORAGE)
    with pytest.raises(CheckCondition) as err:
        e.check_move(e.get(0x402), e.get(SLOT0))
    assert err.value.reason is Reason.MEDIUM_DESTINATION_ELEMENT_FULL


# -- commands ------------------------------------------------------------------------------
def test_inquiry_and_mode_pages_describe_the_library(tmp_path: Path) -> None:
    changer, _ = build(tmp_path)
    data = good(run(changer, bytes([0x12, 0, 0, 0, 96, 0]))).data
    assert data is not None and data[0] == 0x08 and data[16:32] == b"VIRTUAL-CHANGER "
    assert b"\x04\x80" in bytes(data[58:74])  # version descriptor SMC-3
    vpd = good(run(changer, bytes([0x12, 1, 0x83, 0, 255, 0]))).data
    assert vpd is not None and vpd[1] == 0x83
    page = good(run(changer, bytes([0x1A, 0x08, 0x1D, 0, 255, 0]))).data
    assert page is not None
    assert bytes(page[4:24]) == bytes.fromhex("1d12 0001 0001 0400 0004 0200 0001 0100 0002 0000")
    caps = good(run(changer, bytes([0x1A, 0x08, 0x1F, 0, 255, 0]))).data
    assert caps is not None and caps[4:6] == b"\x1f\x12" and caps[6] == 0x0E
    assert bytes(caps[8:12]) == bytes([0, 0x0E, 0x0E, 0x0E])  # MOVE MEDIUM
    assert bytes(caps[16:20]) == bytes([0, 0x0E, 0x0E, 0x0E])  # EXCHANGE MEDIUM
    geometry = good(run(changer, bytes([0x1A, 0x08, 0x1E, 0, 255, 0]))).data
    assert geometry is not None and bytes(geometry[4:8]) == b"\x1e\x02\x00\x00"


def test_read_element_status_reports_barcodes_by_type(tmp_path: Path) -> None:
    changer, _ = build(tmp_path)
    status = res(changer)
    assert status["first_element_address"] == ROBOT and status["num_elements"] == 8
    kinds = [p["element_type"] for p in status["element_status_pages"]]
    assert kinds == [1, 4, 3, 2]  # in address order: transport, drives, mail slot, slots
    assert barcodes(status) == {SLOT0: "A00001L6", SLOT0 + 1: "A00002L6"}
    slots = res(changer, int(ElementType.STORAGE))
    assert [p["element_type"] for p in slots["element_status_pages"]] == [2]
    assert len(slots["element_status_pages"][0]["element_descriptors"]) == 4
    plain = res(changer, voltag=False)
    assert not plain["element_status_pages"][0]["pvoltag"]
    # DVCID: each drive's T10 vendor id, with its serial number
    cdb = bytes([0xB8, 0x04, 0, 0, 0, 2, 1, 0, 0x10, 0, 0, 0])
    data = good(run(changer, cdb)).data
    assert data is not None
    length = int.from_bytes(data[10:12], "big")
    first = bytes(data[16 : 16 + length])
    assert first[12:16] == bytes([2, 1, 0, 40]) and first[16:24] == b"TARGETD "


def test_move_loads_a_drive_which_then_works_as_a_tape(tmp_path: Path) -> None:
    changer, (drive, _) = build(tmp_path)
    drive.nexus_established(NEXUS)
    run(drive, bytes(6))  # POWER ON
    assert sense(tur(drive)) == (NOT_READY, 0x3A, 0x00)
    good(move(changer, SLOT0, DRIVE0))
    assert sense(tur(drive)) == (UNIT_ATTENTION, 0x28, 0x00)
    good(tur(drive))
    good(run(drive, bytes([0x0A, 0, 0, 0, 5, 0]), b"hello"))
    good(run(drive, bytes([0x10, 0, 0, 0, 1, 0])))
    status = barcodes(res(changer))
    assert status == {DRIVE0: "A00001L6", SLOT0 + 1: "A00002L6"}
    # unloading back to its home slot (mtx unload uses the drive's source address)
    good(move(changer, DRIVE0, SLOT0 + 3))
    assert sense(tur(drive)) == (NOT_READY, 0x3A, 0x00)
    good(move(changer, SLOT0 + 3, DRIVE1))
    _, other = changer.library.drives
    assert other is not None and other.image.read(0) == b"hello"


def test_refused_moves_move_nothing(tmp_path: Path) -> None:
    changer, (drive, _) = build(tmp_path)
    good(move(changer, SLOT0, DRIVE0))
    before = barcodes(res(changer))
    assert sense(move(changer, SLOT0 + 1, DRIVE0)) == (ILLEGAL_REQUEST, 0x3B, 0x0D)  # full
    assert sense(move(changer, SLOT0 + 2, SLOT0 + 3)) == (ILLEGAL_REQUEST, 0x3B, 0x0E)  # empty
    assert sense(move(changer, SLOT0 + 1, 0x0999)) == (ILLEGAL_REQUEST, 0x21, 0x01)
    good(run(drive, bytes([0x1E, 0, 0, 0, 1, 0])))  # the drive's initiator locks the tape
    assert sense(move(changer, DRIVE0, SLOT0 + 2)) == (ILLEGAL_REQUEST, 0x53, 0x02)
    assert barcodes(res(changer)) == before
    assert drive.has_cartridge and drive.barcode == "A00001L6"
    good(run(drive, bytes([0x1E, 0, 0, 0, 0, 0])))
    good(move(changer, DRIVE0, SLOT0 + 2))
    assert sense(move(changer, SLOT0, SLOT0 + 1, transport=0)) == (ILLEGAL_REQUEST, 0x3B, 0x0E)
    assert sense(run(changer, bytes([0xA5, 0, 0, 1, 4, 1, 4, 2, 0, 0, 1, 0]))) == (
        ILLEGAL_REQUEST,
        0x24,
        0x00,
    )  # INVERT


def exchange(
    lu: MediaChanger, src: int, first: int, second: int, transport: int = ROBOT, flags: int = 0
) -> ScsiResult:
    addresses = b"".join(a.to_bytes(2, "big") for a in (transport, src, first, second))
    return run(lu, bytes([0xA6, 0]) + addresses + bytes([flags, 0]))


def test_exchange_medium_swaps_and_rotates_cartridges(tmp_path: Path) -> None:
    changer, (drive, _) = build(tmp_path, ("A00001L6", "A00002L6", "A00003L6"))
    good(move(changer, SLOT0, DRIVE0))
    good(run(drive, bytes([0x0A, 0, 0, 0, 3, 0]), b"one"))
    # a swap (mtx exchange): the second destination is the source
    good(exchange(changer, SLOT0 + 1, SLOT0 + 2, SLOT0 + 1))
    assert barcodes(res(changer)) == {
        DRIVE0: "A00001L6",
        SLOT0 + 1: "A00003L6",
        SLOT0 + 2: "A00002L6",
    }
    # the cartridge in the drive out to its home slot's neighbour, a slot's in: the drive
    # now holds the other tape, and the first one kept its record
    good(exchange(changer, SLOT0 + 1, DRIVE0, SLOT0 + 3))
    assert barcodes(res(changer)) == {
        DRIVE0: "A00003L6",
        SLOT0 + 2: "A00002L6",
        SLOT0 + 3: "A00001L6",
    }
    assert drive.barcode == "A00003L6"
    inventory = json.loads((tmp_path / "lib" / "inventory.json").read_text())["elements"]
    assert inventory["0403"] == {"barcode": "A00001L6", "source": SLOT0}
    assert inventory["0100"] == {"barcode": "A00003L6", "source": SLOT0 + 1}
    good(move(changer, DRIVE0, SLOT0))
    good(move(changer, SLOT0 + 3, DRIVE0))
    assert drive.image.read(0) == b"one"
    # a swap between the drive and a slot: the drive gets the slot's cartridge at once
    good(exchange(changer, DRIVE0, SLOT0 + 2, DRIVE0))
    assert barcodes(res(changer)) == {
        DRIVE0: "A00002L6",
        SLOT0: "A00003L6",
        SLOT0 + 2: "A00001L6",
    }
    assert drive.barcode == "A00002L6"
    good(move(changer, SLOT0 + 2, DRIVE1))
    _, other = changer.library.drives
    assert other is not None and other.image.read(0) == b"one"


def test_refused_exchanges_move_nothing(tmp_path: Path) -> None:
    changer, (drive, _) = build(tmp_path, ("A00001L6", "A00002L6", "A00003L6"))
    good(move(changer, SLOT0, DRIVE0))
    before = barcodes(res(changer))
    for args, expected in (
        ((SLOT0 + 3, SLOT0 + 1, SLOT0 + 3), (ILLEGAL_REQUEST, 0x3B, 0x0E)),  # empty source
        ((SLOT0 + 1, SLOT0 + 3, SLOT0 + 1), (ILLEGAL_REQUEST, 0x3B, 0x0E)),  # empty first
        ((SLOT0 + 1, DRIVE0, SLOT0 + 2), (ILLEGAL_REQUEST, 0x3B, 0x0D)),  # full second
        ((SLOT0 + 1, SLOT0 + 1, SLOT0 + 2), (ILLEGAL_REQUEST, 0x21, 0x01)),  # first = source
        ((SLOT0 + 1, 0x0777, SLOT0 + 3), (ILLEGAL_REQUEST, 0x21, 0x01)),
        ((ROBOT, SLOT0 + 1, SLOT0 + 3), (ILLEGAL_REQUEST, 0x21, 0x01)),
    ):
        assert sense(exchange(changer, *args)) == expected, args
    assert sense(exchange(changer, SLOT0 + 1, DRIVE0, SLOT0 + 3, flags=0x02)) == (
        ILLEGAL_REQUEST,
        0x24,
        0x00,
    )  # INV1
    good(run(drive, bytes([0x1E, 0, 0, 0, 1, 0])))  # the drive's tape is locked
    assert sense(exchange(changer, SLOT0 + 1, DRIVE0, SLOT0 + 3)) == (ILLEGAL_REQUEST, 0x53, 0x02)
    assert sense(exchange(changer, DRIVE0, SLOT0 + 1, DRIVE0)) == (ILLEGAL_REQUEST, 0x53, 0x02)
    assert barcodes(res(changer)) == before
    assert drive.has_cartridge and drive.barcode == "A00001L6"


def test_move_into_a_drive_holding_a_locked_tape_is_refused(tmp_path: Path) -> None:
    changer, (drive, _) = build(tmp_path)
    good(move(changer, SLOT0, DRIVE0))
    good(run(drive, bytes([0x1E, 0, 0, 0, 1, 0])))
    before = barcodes(res(changer))
    assert sense(move(changer, SLOT0 + 1, DRIVE0)) == (ILLEGAL_REQUEST, 0x3B, 0x0D)
    assert barcodes(res(changer)) == before and drive.barcode == "A00001L6"


def test_initialize_and_position_check_their_addresses(tmp_path: Path) -> None:
    changer, _ = build(tmp_path)
    good(run(changer, bytes([0x07, 0, 0, 0, 0, 0])))
    good(run(changer, bytes([0x37, 0x01, 0x04, 0x00, 0, 0, 0, 2, 0, 0])))
    assert sense(run(changer, bytes([0x37, 0x01, 0x09, 0x00, 0, 0, 0, 2, 0, 0]))) == (
        ILLEGAL_REQUEST,
        0x21,
        0x01,
    )
    good(run(changer, bytes([0x2B, 0, 0, 1, 1, 0, 0, 0, 0, 0])))
    assert sense(run(changer, bytes([0x2B, 0, 0, 1, 0x77, 0, 0, 0, 0, 0]))) == (
        ILLEGAL_REQUEST,
        0x21,
        0x01,
    )


def test_import_export_through_the_mail_slot_and_unit_attention(tmp_path: Path) -> None:
    changer, _ = build(tmp_path)
    for nexus in (NEXUS, OTHER):
        changer.nexus_established(nexus)
        run(changer, bytes(6), nexus=nexus)
    good(run(changer, bytes([0x1E, 0, 0, 0, 1, 0])))
    with pytest.raises(LibraryError, match="locked"):
        asyncio.run(changer.import_cartridge("NEW001L6"))
    changer.nexus_lost(NEXUS)  # the lock ends with the nexus that set it
    changer.nexus_established(NEXUS)
    run(changer, bytes(6))
    assert asyncio.run(changer.import_cartridge("NEW001L6")) == MAIL0
    for nexus in (NEXUS, OTHER):  # the operator's change is news to every initiator
        assert sense(tur(changer, nexus)) == (UNIT_ATTENTION, 0x28, 0x01)
    status = res(changer, int(ElementType.IMPORT_EXPORT))
    (mail,) = status["element_status_pages"][0]["element_descriptors"]
    assert mail["full"] and mail["impexp"] and mail["inenab"] and mail["exenab"]
    with pytest.raises(LibraryError, match="full"):
        asyncio.run(changer.import_cartridge("NEW002L6"))
    good(move(changer, MAIL0, SLOT0 + 2))
    good(move(changer, SLOT0, MAIL0))
    with pytest.raises(LibraryError, match="not in a mail slot"):
        asyncio.run(changer.export_cartridge("NEW001L6"))
    out = asyncio.run(changer.export_cartridge("A00001L6"))
    assert Path(out).is_file() and not (tmp_path / "lib" / "A00001L6.img").exists()
    assert sense(tur(changer)) == (UNIT_ATTENTION, 0x28, 0x01)
    assert barcodes(res(changer)) == {SLOT0 + 1: "A00002L6", SLOT0 + 2: "NEW001L6"}


def test_inventory_survives_a_restart_with_the_drive_loaded(tmp_path: Path) -> None:
    changer, (drive, _) = build(tmp_path)
    good(move(changer, SLOT0 + 1, DRIVE0))
    good(run(drive, bytes([0x0A, 0, 0, 0, 3, 0]), b"abc"))
    drive.close()
    changer.close()
    inventory = json.loads((tmp_path / "lib" / "inventory.json").read_text())
    assert inventory["elements"]["0100"] == {"barcode": "A00002L6", "source": SLOT0 + 1}
    changer, (drive, _) = build(tmp_path)  # the configured tapes exist: none is made again
    assert barcodes(res(changer)) == {SLOT0: "A00001L6", DRIVE0: "A00002L6"}
    assert drive.barcode == "A00002L6" and drive.image.read(0) == b"abc"
    # a cartridge dropped into the directory by hand gets the first free slot
    TapeDirectory(tmp_path / "lib", 1 << 20).create("HAND01L6")
    changer, _ = build(tmp_path)
    assert barcodes(res(changer))[SLOT0 + 1] == "HAND01L6"


def test_empty_library_drive_is_not_ready_for_every_medium_command(tmp_path: Path) -> None:
    _, (drive, _) = build(tmp_path)
    for cdb in (
        bytes([0x08, 0, 0, 0, 10, 0]),  # READ(6)
        bytes([0x0A, 0, 0, 0, 0, 0]),  # WRITE(6) of nothing
        bytes([0x01, 0, 0, 0, 0, 0]),  # REWIND
        bytes([0x1B, 0, 0, 0, 1, 0]),  # LOAD
        bytes([0x92, 0, 0, 0] + [0] * 12),  # LOCATE(16)
        bytes([0x44, 0, 0, 0, 0, 0, 0, 0, 255, 0]),  # REPORT DENSITY SUPPORT
        bytes([0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # READ POSITION
    ):
        assert sense(run(drive, cdb)) == (NOT_READY, 0x3A, 0x00), cdb.hex()
    asyncio.run(drive.flush())  # shutdown of an empty drive: nothing to sync, no error


def test_a_cartridge_that_does_not_open_stays_in_its_slot(tmp_path: Path) -> None:
    changer, (drive, _) = build(tmp_path)
    (tmp_path / "lib" / "A00001L6.img").write_bytes(b"not a tape")
    assert sense(move(changer, SLOT0, DRIVE0)) == (HARDWARE_ERROR, 0x53, 0x00)
    assert barcodes(res(changer))[SLOT0] == "A00001L6" and not drive.has_cartridge


def test_alternate_volume_tags_travel_with_their_cartridge(tmp_path: Path) -> None:
    changer, _ = build(tmp_path)
    with pytest.raises(LibraryError, match="not in the library"):
        asyncio.run(changer.tag_cartridge("NOPE01L6", "X"))
    with pytest.raises(LibraryError, match="not a volume tag"):
        asyncio.run(changer.tag_cartridge("A00002L6", "has space"))
    # without alternate tags the pages carry primary tags only (36 bytes after 12)
    plain = bytes(good(run(changer, bytes([0xB8, 0x12, 0, 0, 0, 9, 0, 0, 0xFF, 0xFF, 0, 0]))).data)
    assert plain[9] == 0x80 and int.from_bytes(plain[10:12], "big") == 12 + 36 + 4
    asyncio.run(changer.tag_cartridge("A00002L6", "SIDE-B"))
    good(move(changer, SLOT0 + 1, DRIVE1))
    status = res(changer)
    tags = {
        d["element_address"]: bytes(d["alternate_volume_tag"])
        for p in status["element_status_pages"]
        if p["avoltag"]
        for d in p["element_descriptors"]
    }
    # only the drives' page has one: every descriptor of it carries the field
    assert [p["element_type"] for p in status["element_status_pages"] if p["avoltag"]] == [4]
    assert tags == {DRIVE0: bytes(36), DRIVE1: b"SIDE-B".ljust(32) + bytes(4)}
    drives = bytes(good(run(changer, bytes([0xB8, 0x14, 1, 0, 0, 2, 0, 0, 0xFF, 0xFF, 0, 0]))).data)
    assert drives[9] == 0xC0 and int.from_bytes(drives[10:12], "big") == 12 + 36 + 36 + 4
    assert asyncio.run(changer.inventory())[1]["alternate"] == "SIDE-B"
    changer.close()
    changer, _ = build(tmp_path)  # kept in the inventory across a restart
    assert changer.elements.alternates == {"A00002L6": "SIDE-B"}
    asyncio.run(changer.tag_cartridge("A00002L6", None))
    assert not res(changer)["element_status_pages"][1]["avoltag"]
    asyncio.run(changer.tag_cartridge("A00001L6", "OTHER"))
    good(move(changer, SLOT0, MAIL0))
    asyncio.run(changer.export_cartridge("A00001L6"))
    assert changer.elements.alternates == {}


def test_read_element_status_curdata_and_reserved_bits(tmp_path: Path) -> None:
    changer, _ = build(tmp_path)
    cdb = bytearray([0xB8, 0x14, 0, 0, 0, 2, 0x01, 0, 0x10, 0, 0, 0])  # drives, VOLTAG, DVCID
    plain = good(run(changer, bytes(cdb))).data
    cdb[6] = 0x03  # CURDATA too: the status is always current, so the same answer
    assert good(run(changer, bytes(cdb))).data == plain
    cdb[6] = 0x04  # a reserved bit
    result = run(changer, bytes(cdb))
    assert sense(result) == (ILLEGAL_REQUEST, 0x24, 0x00)
    assert result.sense is not None and result.sense[15:18] == bytes([0xC0, 0, 6])
    cdb[6], cdb[1] = 0x01, 0x17  # element type 7 is none of SMC's
    assert sense(run(changer, bytes(cdb))) == (ILLEGAL_REQUEST, 0x24, 0x00)
