"""EXTENDED COPY from Linux in a QEMU guest: sg_xcopy block to block, sg_raw block to
tape read back with dd from /dev/nstN, a restore with segment 01h, sg_copy_results."""

from __future__ import annotations

from conftest import DaemonFactory
from guest_vm import GUEST_DIR, run_guest, start_for_guest
from xcopy_lists import cscd, identification, lid1, seg_b2s, seg_filemarks, seg_s2b

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


def naa(lun: int) -> bytes:
    """What VPD 83h reports for the LUN."""
    return identification(Identity(f"{IQN}/lun{lun}").naa)


def octal(data: bytes) -> str:
    """For the guest's ``printf '%b'``: every byte as a \\0NNN escape."""
    return "".join(f"\\0{b:03o}" for b in data)


def test_guest_xcopy_with_sg3_utils(targetd_factory: DaemonFactory) -> None:
    lbas = range(0, 2048, RECORD_BLOCKS)
    record = RECORD_BLOCKS * 512
    backup = lid1(
        [cscd(naa(0), 0x00, 512), cscd(naa(2), 0x01)],
        [*(seg_b2s(0, 1, record, RECORD_BLOCKS, lba) for lba in lbas), seg_filemarks(1, 1)],
        list_id=1,
    )
    restore = lid1(
        [cscd(naa(2), 0x01), cscd(naa(1), 0x00, 512)],
        [seg_s2b(0, 1, record, RECORD_BLOCKS, 4096 + lba) for lba in lbas],
        list_id=5,
    )
    daemon = start_for_guest(targetd_factory, TARGETS)
    out = run_guest(
        GUEST_DIR / "xcopy.sh",
        daemon,
        env={"PARAMS_BACKUP": octal(backup), "PARAMS_RESTORE": octal(restore)},
        timeout=150,
    )
    assert "xcopy: all steps passed" in out
