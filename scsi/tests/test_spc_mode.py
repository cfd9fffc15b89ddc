"""MODE SENSE / MODE SELECT (6) and (10) and the ModePage API."""

from __future__ import annotations

import asyncio

from scsi.command import Nexus, ScsiCommand, ScsiResult, Status
from scsi.logical_unit import Identity, LogicalUnit
from scsi.mode import ModePage
from scsi.sense import parse_sense
from scsi.spc import SPC_TABLE

A = Nexus("iqn.a,i,0x1", "iqn.t,t,0x1")
B = Nexus("iqn.b,i,0x1", "iqn.t,t,0x1")

CONTROL = bytes([0x0A, 0x0A, 0x00, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0])
IEC = bytes([0x1C, 0x0A, 0x08]) + bytes(9)
CACHING_DEFAULT = bytes([0x08, 0x12, 0x04]) + bytes(17)


class Disk(LogicalUnit):
    table = SPC_TABLE

    def __init__(self) -> None:
        super().__init__(Identity("disk"))
        self.caching_changes = 0

    def mode_pages(self):
        mask = bytearray(20)
        mask[2] = 0x04

        def count(page: ModePage) -> None:
            self.caching_changes += 1

        return {0x08: ModePage(0x08, CACHING_DEFAULT, bytes(mask), on_change=count)}

    def mode_device_specific(self) -> int:
        return 0x10

    def block_descriptor(self) -> bytes:
        return bytes([0, 0, 0x10, 0, 0, 0, 2, 0])  # 4096 blocks of 512 bytes


def run(lu: LogicalUnit, cdb: bytes, nexus: Nexus = A, data: bytes | None = None) -> ScsiResult:
    out = memoryview(data) if data is not None else None
    return asyncio.run(lu.execute(ScsiCommand(cdb, 0, nexus, data_out=out)))


def sense_of(result: ScsiResult) -> tuple[int, int, int, bytes]:
    assert result.status == Status.CHECK_CONDITION
    return (*parse_sense(result.sense), result.sense[15:18])


def sense6(page: int, subpage: int = 0, pc: int = 0, alloc: int = 255, dbd: bool = False):
    return bytes([0x1A, 0x08 if dbd else 0, pc << 6 | page, subpage, alloc, 0])


def sense10(page: int, subpage: int = 0, pc: int = 0, alloc: int = 1024, flags: int = 0):
    return bytes([0x5A, flags, pc << 6 | page, subpage, 0, 0, 0]) + alloc.to_bytes(2, "big") + b"\0"


def select6(data: bytes, flags: int = 0x10) -> bytes:
    return bytes([0x15, flags, 0, 0, len(data), 0])


def select10(data: bytes, flags: int = 0x10) -> bytes:
    return bytes([0x55, flags, 0, 0, 0, 0, 0]) + len(data).to_bytes(2, "big") + b"\0"


def test_mode_sense6_all_pages_with_block_descriptor() -> None:
    data = bytes(run(Disk(), sense6(0x3F)).data)
    pages = CACHING_DEFAULT + CONTROL + IEC
    assert data[:4] == bytes([3 + 8 + len(pages), 0, 0x10, 8])
    assert data[4:12] == bytes([0, 0, 0x10, 0, 0, 0, 2, 0])
    assert data[12:] == pages


def test_mode_sense6_dbd_single_page_and_truncation() -> None:
    lu = Disk()
    assert bytes(run(lu, sense6(0x0A, dbd=True)).data) == bytes([15, 0, 0x10, 0]) + CONTROL
    assert bytes(run(lu, sense6(0x3F, alloc=4)).data) == bytes([3 + 8 + 44, 0, 0x10, 8])


def test_mode_sense_changeable_and_default() -> None:
    lu = Disk()
    data = bytes(run(lu, sense6(0x08, pc=1, dbd=True)).data)
    assert data[4:] == bytes([0x08, 0x12, 0x04]) + bytes(17)
    data = bytes(run(lu, sense6(0x0A, pc=1, dbd=True)).data)
    assert data[4:] == bytes([0x0A, 0x0A, 0x04]) + bytes(9)
    data = bytes(run(lu, sense6(0x0A, pc=2, dbd=True)).data)
    assert data[4:] == CONTROL


def test_mode_sense_errors() -> None:
    lu = Disk()
    assert sense_of(run(lu, sense6(0x0A, pc=3))) == (5, 0x39, 0, bytes([0xCF, 0, 2]))
    assert sense_of(run(lu, sense6(0x19))) == (5, 0x24, 0, bytes([0xCD, 0, 2]))
    assert sense_of(run(lu, sense6(0x0A, subpage=1))) == (5, 0x24, 0, bytes([0xC0, 0, 3]))
    assert sense_of(run(lu, sense6(0x3F, subpage=5))) == (5, 0x24, 0, bytes([0xC0, 0, 3]))


def test_mode_sense10_header_and_subpages() -> None:
    lu = Disk()
    data = bytes(run(lu, sense10(0x3F, 0xFF, flags=0x10)).data)
    assert data[:8] == bytes([0, 6 + 8 + 44, 0, 0x10, 0, 0, 0, 8])  # no long descriptor
    data = bytes(run(lu, sense10(0x0A, 0xFF, flags=0x08)).data)
    assert data == bytes([0, 6 + 12, 0, 0x10, 0, 0, 0, 0]) + CONTROL


def test_mode_select_d_sense_switches_sense_format_and_raises_ua() -> None:
    lu = Disk()
    lu.nexus_established(A)
    lu.nexus_established(B)
    run(lu, bytes([0x03, 0, 0, 0, 18, 0]), A)  # clear power-on UA
    run(lu, bytes([0x03, 0, 0, 0, 18, 0]), B)
    page = bytearray(CONTROL)
    page[2] = 0x04
    params = bytes(4) + page
    assert run(lu, select6(params), A, params).status == Status.GOOD
    assert lu.descriptor_sense is True
    assert bytes(run(lu, sense6(0x0A, dbd=True)).data)[4:] == bytes(page)
    # Another nexus learns of it; this one does not.
    result = run(lu, bytes(6), B)
    assert result.sense[:4] == bytes([0x72, 0x06, 0x2A, 0x01])
    assert run(lu, bytes(6), A).status == Status.GOOD
    result = run(lu, sense6(0x0A, pc=3), A)
    assert result.sense == bytes([0x72, 5, 0x39, 0, 0, 0, 0, 8, 2, 6, 0, 0, 0xCF, 0, 2, 0])
    page[2] = 0
    params = bytes(8) + page
    assert run(lu, select10(params), A, params).status == Status.GOOD
    assert lu.descriptor_sense is False
    assert run(lu, sense6(0x0A, pc=3), A).sense[0] == 0x70


def test_mode_select_device_page_on_change() -> None:
    lu = Disk()
    page = bytearray(CACHING_DEFAULT)
    page[2] = 0
    params = bytes(4) + bytes([0, 0, 0x10, 0, 0, 0, 2, 0]) + page
    params = params[:3] + bytes([8]) + params[4:]
    assert run(lu, select6(params), A, params).status == Status.GOOD
    assert lu.caching_changes == 1
    assert lu.mode.get(0x08).bit(2, 0x04) is False
    assert run(lu, select6(params), A, params).status == Status.GOOD
    assert lu.caching_changes == 1  # unchanged: no second notification


def test_mode_select_refuses_unchangeable_bits() -> None:
    lu = Disk()
    page = bytearray(CONTROL)
    page[3] = 0x00  # QUEUE ALGORITHM MODIFIER is not changeable
    params = bytes(4) + page
    assert sense_of(run(lu, select6(params), A, params)) == (5, 0x26, 0, bytes([0x80, 0, 7]))
    assert lu.mode.get(0x0A).current[3] == 0x10


def test_mode_select_errors() -> None:
    lu = Disk()
    params = bytes(4) + CONTROL
    assert sense_of(run(lu, select6(params, flags=0x11), A, params)) == (
        5,
        0x24,
        0,
        bytes([0xC8, 0, 1]),
    )
    assert sense_of(run(lu, select6(params, flags=0), A, params)) == (
        5,
        0x24,
        0,
        bytes([0xCC, 0, 1]),
    )
    # Parameter list length shorter than the header.
    assert sense_of(run(lu, select6(b"\0\0"), A, b"\0\0"))[:3] == (5, 0x1A, 0)
    # A page cut short.
    cut = params[:10]
    assert sense_of(run(lu, select6(cut), A, cut))[:3] == (5, 0x1A, 0)
    # Unknown page.
    bad = bytes(4) + bytes([0x19, 0x02, 0, 0])
    assert sense_of(run(lu, select6(bad), A, bad)) == (5, 0x26, 0, bytes([0x80, 0, 4]))
    # Wrong page length.
    bad = bytes(4) + bytes([0x0A, 0x02, 0, 0x10])
    assert sense_of(run(lu, select6(bad), A, bad)) == (5, 0x26, 0, bytes([0x80, 0, 5]))
    # A block descriptor that changes the block length.
    bad = bytes([0, 0, 0, 8]) + bytes([0, 0, 0x10, 0, 0, 0, 0x10, 0])
    assert sense_of(run(lu, select6(bad), A, bad))[:3] == (5, 0x26, 0)
    # Zero-length parameter list is a no-op.
    assert run(lu, select6(b""), A, b"").status == Status.GOOD


def test_modepage_subpage_format() -> None:
    page = ModePage(0x0A, bytes(12), bytes(4) + bytes([0xFF]) + bytes(7), subpage=1)
    assert page.encode(0)[:4] == bytes([0x4A, 0x01, 0x00, 0x08])
    assert page.encode(1) == bytes([0x4A, 0x01, 0x00, 0x08, 0xFF]) + bytes(7)
