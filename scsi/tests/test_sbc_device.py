"""BlockDevice identity and cache commands: READ CAPACITY (10)/(16), the SBC VPD pages,
the caching mode page and block descriptors, SYNCHRONIZE CACHE, PRE-FETCH, START STOP
UNIT, and the opcode table the device answers with."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from unittest import mock

import pytest
from test_sbc_support import cdb10, cdb16, make_lu, run, sense_of

from scsi.block_device import BlockDevice
from scsi.command import Status
from scsi.logical_unit import Identity


class BigStore:
    """A store that only claims to be large (READ CAPACITY never touches data)."""

    size = (1 << 32) * 512 + 4096


@pytest.mark.parametrize("block_size", [512, 4096])
def test_read_capacity(tmp_path: Path, block_size: int) -> None:
    lu = make_lu(tmp_path, block_size)
    n = 4 * 1024 * 1024 // block_size
    result = run(lu, bytes([0x25]) + bytes(9))
    assert bytes(result.data) == struct.pack(">II", n - 1, block_size)
    rc16 = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + b"\0\0"
    data = bytes(run(lu, rc16).data)
    assert data == struct.pack(">QI", n - 1, block_size) + bytes([0, 0, 0xC0, 0]) + bytes(16)
    short = bytes([0x9E, 0x10]) + bytes(8) + (12).to_bytes(4, "big") + b"\0\0"
    assert bytes(run(lu, short).data) == data[:12]
    zero = bytes([0x9E, 0x10]) + bytes(14)
    assert run(lu, zero).status == Status.GOOD
    assert run(lu, zero).data == b""
    lba_without_pmi = bytes([0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0])
    assert sense_of(run(lu, lba_without_pmi)) == (0x05, 0x24, 0x00)
    assert run(lu, bytes([0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0])).status == Status.GOOD


def test_read_capacity10_saturates_for_large_luns() -> None:
    lu = BlockDevice(Identity("big"), BigStore(), block_size=512)  # type: ignore[arg-type]
    assert bytes(run(lu, bytes([0x25]) + bytes(9)).data) == b"\xff\xff\xff\xff\x00\x00\x02\x00"
    rc16 = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + b"\0\0"
    assert bytes(run(lu, rc16).data)[:8] == ((1 << 32) + 7).to_bytes(8, "big")
    assert lu.block_descriptor() == b"\xff\xff\xff\xff\x00\x00\x02\x00"


def inquiry_vpd(lu: BlockDevice, page: int) -> bytes:
    result = run(lu, bytes([0x12, 0x01, page, 0x01, 0x00, 0x00]))
    assert result.status == Status.GOOD, result
    return bytes(result.data)


@pytest.mark.parametrize("block_size", [512, 4096])
def test_block_limits_page(tmp_path: Path, block_size: int) -> None:
    lu = make_lu(tmp_path, block_size)
    page = inquiry_vpd(lu, 0xB0)
    assert page[:4] == bytes([0x00, 0xB0, 0x00, 0x3C]) and len(page) == 64
    wsnz, max_caw, granularity, max_xfer, opt_xfer = struct.unpack(">BBHII", page[4:16])
    assert (wsnz, max_caw) == (0, 255)
    assert granularity == 4096 // block_size
    assert max_xfer == 8 * 1024 * 1024 // block_size
    assert opt_xfer == 1024 * 1024 // block_size
    max_unmap, max_descriptors, unmap_granularity, alignment = struct.unpack(">IIII", page[20:36])
    assert (max_unmap, max_descriptors) == (0xFFFFFFFF, 256)
    assert unmap_granularity == 4096 // block_size
    assert alignment == 0x80000000
    assert struct.unpack(">Q", page[36:44])[0] == (16 << 20) // block_size
    assert lu.max_transfer_blocks == max_xfer


def test_characteristics_and_provisioning_pages(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    b1 = inquiry_vpd(lu, 0xB1)
    assert b1[:8] == bytes([0x00, 0xB1, 0x00, 0x3C, 0x00, 0x01, 0x00, 0x00])
    assert len(b1) == 64
    b2 = inquiry_vpd(lu, 0xB2)
    assert b2 == bytes([0x00, 0xB2, 0x00, 0x04, 0x00, 0xE4, 0x02, 0x00])
    supported = inquiry_vpd(lu, 0x00)
    assert {0xB0, 0xB1, 0xB2} <= set(supported[4:])


def test_caching_page_and_descriptors(tmp_path: Path) -> None:
    lu = make_lu(tmp_path, 4096)
    sense10 = bytes([0x5A, 0x00, 0x08, 0, 0, 0, 0, 0x01, 0x00, 0])
    data = bytes(run(lu, sense10).data)
    # header: length, medium type, DPOFUA, LONGLBA=0, descriptor length 8
    assert data[:8] == (6 + 8 + 20).to_bytes(2, "big") + bytes([0, 0x10, 0, 0, 0, 8])
    assert data[8:16] == (1024).to_bytes(4, "big") + b"\0" + (4096).to_bytes(3, "big")
    assert data[16:] == bytes([0x08, 0x12, 0x04]) + bytes(17)
    long_sense = bytes([0x5A, 0x10, 0x08, 0, 0, 0, 0, 0x01, 0x00, 0])
    data = bytes(run(lu, long_sense).data)
    assert data[4] == 0x01 and data[6:8] == b"\x00\x10"
    assert data[8:24] == (1024).to_bytes(8, "big") + bytes(4) + (4096).to_bytes(4, "big")
    # MODE SELECT turning WCE off makes the LU write through
    params = bytes(8) + bytes([0x08, 0x12, 0x00]) + bytes(17)
    select = bytes([0x55, 0x10, 0, 0, 0, 0, 0, 0, len(params), 0])
    assert run(lu, select, params).status == Status.GOOD
    assert lu.write_cache is False


def test_synchronize_cache_really_syncs(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    with mock.patch("backing.sparse_file.os.fdatasync", wraps=os.fdatasync) as sync:
        assert run(lu, cdb10(0x35, 0, 0)).status == Status.GOOD
        assert run(lu, cdb16(0x91, 10, 20)).status == Status.GOOD
        assert sense_of(run(lu, cdb10(0x35, lu.num_blocks, 1))) == (0x05, 0x21, 0x00)
    assert sync.call_count == 2


def test_prefetch_and_start_stop(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    n = lu.num_blocks
    assert run(lu, cdb10(0x34, 0, 0)).status == Status.GOOD
    assert run(lu, cdb16(0x90, n - 1, 1, 0x02)).status == Status.GOOD
    assert sense_of(run(lu, cdb10(0x34, n + 1, 0))) == (0x05, 0x21, 0x00)
    assert sense_of(run(lu, cdb16(0x90, 2**63, 0))) == (0x05, 0x21, 0x00)
    with mock.patch("backing.sparse_file.os.fdatasync") as sync:
        for byte4 in (0x00, 0x01, 0x04, 0x03, 0x02):
            assert run(lu, bytes([0x1B, 0, 0, 0, byte4, 0])).status == Status.GOOD
    assert sync.call_count == 2  # stopping (0x00, 0x02 with LOEJ) flushes; NO_FLUSH does not


def test_table_serves_what_it_reports() -> None:
    from scsi.sbc import SBC_TABLE

    names = {spec.name for spec in SBC_TABLE}
    expected = {
        "READ(6)", "READ(10)", "READ(12)", "READ(16)", "WRITE(6)", "WRITE(10)", "WRITE(12)",
        "WRITE(16)", "WRITE AND VERIFY(10)", "WRITE AND VERIFY(12)", "WRITE AND VERIFY(16)",
        "VERIFY(10)", "VERIFY(12)", "VERIFY(16)", "ORWRITE(16)", "COMPARE AND WRITE",
        "PRE-FETCH(10)", "PRE-FETCH(16)", "SYNCHRONIZE CACHE(10)", "SYNCHRONIZE CACHE(16)",
        "READ CAPACITY(10)", "READ CAPACITY(16)", "UNMAP", "WRITE SAME(10)", "WRITE SAME(16)",
        "GET LBA STATUS", "START STOP UNIT", "INQUIRY",
    }  # fmt: skip
    assert expected <= names
    for spec in SBC_TABLE:
        assert spec.usage[0] == spec.opcode
        if spec.opcode in (0x28, 0x2A, 0xA8, 0xAA, 0x88, 0x8A, 0x89):
            assert spec.usage[1] & 0x18 == 0x18  # DPO and FUA are served


@pytest.mark.parametrize("block_size", [512])
def test_read_defect_data_reports_empty_lists(tmp_path: Path, block_size: int) -> None:
    lu = make_lu(tmp_path, block_size=block_size)
    r10 = run(lu, bytes([0x37, 0, 0x18 | 0x05, 0, 0, 0, 0, 0, 32, 0]))
    assert r10.status == Status.GOOD and bytes(r10.data) == bytes([0, 0x1D, 0, 0])
    r12 = run(lu, bytes([0xB7, 0x08 | 0x04, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]))
    assert r12.status == Status.GOOD and bytes(r12.data) == bytes([0, 0x0C, 0, 0, 0, 0, 0, 0])
    assert bytes(run(lu, bytes([0x37, 0, 0, 0, 0, 0, 0, 0, 2, 0])).data) == bytes(2)
