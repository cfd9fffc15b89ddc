"""Online LUN growth seen by the Linux initiator, in a QEMU guest (docs/operations.md,
"Growing a LUN"): a larger ``size`` and ``targetctl reload`` while ext4 is mounted on the
LUN; the guest rescans, resize2fs grows the mounted file system, and its data stays."""

from __future__ import annotations

from conftest import DaemonFactory
from guest_vm import GUEST_DIR, run_guest, start_for_guest

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd:default"
OLD_SIZE = 32 * MiB
NEW_SIZE = 64 * MiB
# Larger than the whole old LUN: it can only fit once the file system has grown.
BIG_MIB = 40


def targets(size: int) -> str:
    return f'[[target]]\nname = "{IQN}"\n[[target.lun]]\nlun = 0\nsize = "{size // MiB}MiB"\n'


def test_guest_grows_a_mounted_ext4(targetd_factory: DaemonFactory) -> None:
    daemon = start_for_guest(targetd_factory, targets(OLD_SIZE))
    assert daemon.config is not None
    config = daemon.config
    outcomes: list[object] = []

    def grow_lun() -> None:
        config.write_text(config.read_text().replace(targets(OLD_SIZE), targets(NEW_SIZE)))
        outcome = daemon.targetctl_json("reload")
        outcomes.append(outcome)
        if outcome["refused"]:
            raise RuntimeError(f"reload refused: {outcome['refused']}")

    out = run_guest(
        GUEST_DIR / "grow.sh",
        daemon,
        env={
            "OLD_SECTORS": str(OLD_SIZE // 512),
            "NEW_SECTORS": str(NEW_SIZE // 512),
            "OLD_BLOCKS": str(OLD_SIZE // 4096),
            "NEW_BLOCKS": str(NEW_SIZE // 4096),
            "BIG_MIB": str(BIG_MIB),
        },
        actions={"grow-lun": grow_lun},
    )
    assert "grow: all steps passed" in out
    assert outcomes == [
        {
            "applied": [f"target {IQN}: lun 0 grown from {OLD_SIZE} to {NEW_SIZE} bytes"],
            "refused": [],
        }
    ]
