"""EXTENDED COPY from Linux in a QEMU guest: sg_xcopy block to block, sg_raw block to
tape read back with dd from /dev/nstN, a restore with segment 01h, sg_copy_results."""

from __future__ import annotations

import struct

from conftest import DaemonFactory
from guest_vm import GUEST_DIR, run_guest, start_for_guest

from scsi.logical_unit import Identity

IQN = "iqn.2026-11.org.targetd:default"
TARGETS = f"""\
[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
size = "64MiB"
[[target.lun]]
lun = 1
size = "64MiB"
[[target.lun]]
lun = 2
kind = "tape"
capacity = "256MiB"
"""
RECORD_BLOCKS = 256  # 128 KiB records


def cscd(lun: int, device_type: int, block_length: int) -> bytes:
    naa = Identity(f"{IQN}/lun{lun}").naa  # what VPD 83h reports for the LUN
    head = bytes([0xE4, device_type, 0, 0, 0x01, 0x03, 0, len(naa)])
    return head + naa.ljust(20, b"\0") + bytes([0]) + block_length.to_bytes(3, "big")


def lid1(list_id: int, cscds: bytes, segments: bytes) -> bytes:
    return struct.pack(">BBH4xII", list_id, 0, len(cscds), len(segments), 0) + cscds + segments


def stream(code: int, src: int, dst: int, blocks: int, lba: int) -> bytes:
    length = (blocks * 512).to_bytes(3, "big")
    return struct.pack(">BBHHHx3s2xHQ", code, 0, 0x14, src, dst, length, blocks, lba)


def octal(data: bytes) -> str:
    """For the guest's ``printf '%b'``: every byte as a \\0NNN escape."""
    return "".join(f"\\0{b:03o}" for b in data)


def test_guest_xcopy_with_sg3_utils(targetd_factory: DaemonFactory) -> None:
    lbas = range(0, 2048, RECORD_BLOCKS)
    filemark = struct.pack(">BBH2xHx3s", 0x10, 0, 0x08, 1, (1).to_bytes(3, "big"))
    backup = lid1(
        1,
        cscd(0, 0x00, 512) + cscd(2, 0x01, 0),
        b"".join(stream(0x00, 0, 1, RECORD_BLOCKS, lba) for lba in lbas) + filemark,
    )
    restore = lid1(
        5,
        cscd(2, 0x01, 0) + cscd(1, 0x00, 512),
        b"".join(stream(0x01, 0, 1, RECORD_BLOCKS, 4096 + lba) for lba in lbas),
    )
    daemon = start_for_guest(targetd_factory, TARGETS)
    out = run_guest(
        GUEST_DIR / "xcopy.sh",
        daemon,
        env={"PARAMS_BACKUP": octal(backup), "PARAMS_RESTORE": octal(restore)},
        timeout=150,
    )
    assert "xcopy: all steps passed" in out
