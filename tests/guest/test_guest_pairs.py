"""Volume pairs driven by sg_raw from the Linux initiator, in a QEMU guest: create, ext4 on the
source, split, post-split writes, and the target LUN mounted with exactly the pre-split files."""

from __future__ import annotations

from conftest import DaemonFactory
from guest_vm import GUEST_DIR, run_guest, start_for_guest

# The copy is paced so that the split leaves a backlog: the post-split writes then go through
# copy-before-write while the target side is SPLIT-PENDING.
PAIR_TARGETS = """\
[pairs]
chunk_size = "64KiB"
copy_rate = "6MiB"

[[target]]
name = "iqn.2026-11.org.targetd:default"
[[target.lun]]
lun = 0
size = "64MiB"
[[target.lun]]
lun = 1
size = "64MiB"
"""


def test_guest_pair_split_image_mounts(targetd_factory: DaemonFactory) -> None:
    daemon = start_for_guest(targetd_factory, PAIR_TARGETS)
    out = run_guest(GUEST_DIR / "pairs.sh", daemon, timeout=180)
    assert "pairs: all steps passed" in out
    # The split had a backlog (so copy-before-write ran for the post-split files).
    reflect = [line for line in out.splitlines() if "chunks to reflect at the split:" in line]
    assert reflect and int(reflect[0].rsplit(":", 1)[1]) > 0, out
