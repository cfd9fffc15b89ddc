"""SCSI commands from python-scsi (pyscsi) over cython-iscsi, decoded by pyscsi itself."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from conftest import Daemon

try:
    from pyscsi.pyiscsi.iscsi_device import ISCSIDevice
    from pyscsi.pyscsi.scsi import SCSI
    from pyscsi.pyscsi.scsi_command import SCSICommand
    from pyscsi.pyscsi.scsi_enum_command import sbc
except ImportError as e:  # a missing client is a failure, not a skip
    pytest.fail(
        f"pyscsi/cython-iscsi missing ({e}): run scripts/install-test-deps.sh", pytrace=False
    )

BLOCK = 512


class SynchronizeCache16(SCSICommand):
    """pyscsi has no SYNCHRONIZE CACHE helper: opcode, LBA and block count, nothing else."""

    _cdb_bits = {"opcode": [0xFF, 0]}

    def __init__(self, lba: int = 0, blocks: int = 0) -> None:
        SCSICommand.__init__(self, sbc.SYNCHRONIZE_CACHE_16, 0, 0)
        cdb = bytearray(16)
        cdb[0] = sbc.SYNCHRONIZE_CACHE_16.value
        cdb[2:10] = lba.to_bytes(8, "big")
        cdb[10:14] = blocks.to_bytes(4, "big")
        self.cdb = cdb


@pytest.fixture
def scsi(targetd: Daemon) -> Iterator[SCSI]:
    # pyscsi's ISCSIDevice (not SCSIDevice, which is for /dev/sg nodes) opens iscsi:// URLs.
    with ISCSIDevice(targetd.url(0)) as device:
        yield SCSI(device, BLOCK)


def test_inquiry(scsi: SCSI) -> None:
    result = scsi.inquiry().result
    assert result["peripheral_qualifier"] == 0
    assert result["peripheral_device_type"] == 0
    assert result["rmb"] == 0
    assert bytes(result["t10_vendor_identification"]) == b"TARGETD "
    assert bytes(result["product_identification"]) == b"VIRTUAL-DISK    "


def test_inquiry_device_identification_has_naa(scsi: SCSI) -> None:
    result = scsi.inquiry(evpd=1, page_code=0x83).result
    assert result["page_code"] == 0x83
    naa = [
        d["designator"]
        for d in result["designator_descriptors"]
        if d["designator_type"] == 3 and d["association"] == 0
    ]
    assert naa, result
    assert naa[0]["naa"] == 6
    assert naa[0]["ieee_company_id"] == 0x001405


def test_inquiry_serial_number(scsi: SCSI) -> None:
    result = scsi.inquiry(evpd=1, page_code=0x80).result
    assert result["page_code"] == 0x80
    assert bytes(result["unit_serial_number"]).strip()


def test_readcapacity16(scsi: SCSI) -> None:
    result = scsi.readcapacity16().result
    assert result["returned_lba"] == (1 << 30) // BLOCK - 1
    assert result["block_length"] == BLOCK


def test_write16_read16_round_trip(scsi: SCSI) -> None:
    data = bytearray(os.urandom(16 * BLOCK))
    scsi.write16(1000, 16, data)
    assert bytes(scsi.read16(1000, 16).datain) == bytes(data)
    # a sub-range reads back the matching slice
    assert bytes(scsi.read16(1004, 2).datain) == bytes(data[4 * BLOCK : 6 * BLOCK])


def test_write16_fua_and_synchronize_cache(scsi: SCSI) -> None:
    data = bytearray(b"\x5a" * BLOCK * 8)
    scsi.write16(2048, 8, data, fua=1)
    scsi.execute(SynchronizeCache16())
    scsi.execute(SynchronizeCache16(2048, 8))
    assert bytes(scsi.read16(2048, 8).datain) == bytes(data)


def test_read16_past_the_end_is_check_condition(scsi: SCSI) -> None:
    last = (1 << 30) // BLOCK - 1
    # pyscsi's ISCSIDevice raises CheckCondition without the sense data, and the exception's
    # constructor then fails on it with TypeError: either one means CHECK CONDITION.
    with pytest.raises((ISCSIDevice.CheckCondition, TypeError)):
        scsi.read16(last, 2)
