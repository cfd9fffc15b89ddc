"""Three secondaries of one primary driven by sg_raw from the Linux initiator, in a QEMU guest
(docs/pairs.md "Several secondaries per primary"): a fourth refused, the primary alone
refused as ambiguous, each mirror split at its own instant holding that instant's image
while the others mirror on, and a reverse resync refused while a sibling mirrors, then run."""

from __future__ import annotations

from conftest import DaemonFactory
from guest_vm import GUEST_DIR, run_guest, start_for_guest

ONE_TO_N_TARGETS = """\
[pairs]
chunk_size = "64KiB"

[[target]]
name = "iqn.2026-11.org.targetd:default"
""" + "".join(f'[[target.lun]]\nlun = {lun}\nsize = "16MiB"\n' for lun in range(5))


def test_guest_one_primary_three_mirrors(targetd_factory: DaemonFactory) -> None:
    daemon = start_for_guest(targetd_factory, ONE_TO_N_TARGETS)
    out = run_guest(GUEST_DIR / "pairs_one_to_n.sh", daemon, timeout=300)
    assert "pairs 1:N: all steps passed" in out
    # The fourth CREATE and the ambiguous SPLITs reached the target and were refused there.
    assert out.count("vendor specific ASC=80, ASCQ=09") == 1, out
    assert out.count("vendor specific ASC=80, ASCQ=0a") == 2, out
