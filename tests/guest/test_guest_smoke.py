"""The Linux kernel's iSCSI initiator and sg3_utils against targetd, in a QEMU guest."""

from __future__ import annotations

from conftest import DaemonFactory
from guest_vm import GUEST_DIR, run_guest, start_for_guest

GiB = 1 << 30


def test_guest_smoke(targetd_factory: DaemonFactory) -> None:
    daemon = start_for_guest(targetd_factory)
    out = run_guest(
        GUEST_DIR / "smoke.sh",
        daemon,
        env={
            "EXPECT_VENDOR": "TARGETD",
            "EXPECT_PRODUCT": "VIRTUAL-DISK",
            "EXPECT_LAST_LBA": str(GiB // 512 - 1),
        },
    )
    assert "smoke: all steps passed" in out
