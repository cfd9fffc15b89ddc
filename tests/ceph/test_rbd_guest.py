"""The Linux kernel's initiator, in a QEMU guest, makes and mounts ext4 on an RBD LUN."""

from __future__ import annotations

import sys
from pathlib import Path

from ceph_fixtures import ImageFactory, ceph_cluster, new_image, rbd_lun_toml, target_toml
from cluster import CephCluster
from conftest import DaemonFactory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "guest"))

from guest_vm import run_guest, start_for_guest

SCRIPT = r""". ./lib.sh
step "login"
out=$(iscsi_discover)
expect "$out" "$TARGET_PORTAL,1 $TARGET_IQN"
out=$(iscsi_login)
expect "$out" "successful"
sda=$(block_dev 0)
step "ext4 on the RBD LUN"
run mkfs.ext4 -F -q "$sda"
mkdir -p /mnt/rbd
run mount -t ext4 "$sda" /mnt/rbd
dd if=/dev/urandom of=/mnt/rbd/random.bin bs=64k count=64 2>/dev/null
sum=$(md5sum </mnt/rbd/random.bin)
run sync
run umount /mnt/rbd
echo 3 >/proc/sys/vm/drop_caches
run mount -t ext4 "$sda" /mnt/rbd
[ "$(md5sum </mnt/rbd/random.bin)" = "$sum" ] || fail "random.bin changed across a remount"
run umount /mnt/rbd
echo "rbd guest: all steps passed"
"""


def test_guest_makes_and_mounts_ext4_on_an_rbd_lun(
    ceph_cluster: CephCluster, new_image: ImageFactory, targetd_factory: DaemonFactory
) -> None:
    lun = rbd_lun_toml(ceph_cluster, new_image(create=False), create_size="256MiB")
    daemon = start_for_guest(targetd_factory, target_toml(lun, iqn="iqn.2026-11.org.targetd:rbd"))
    out = run_guest(SCRIPT, daemon)
    assert "rbd guest: all steps passed" in out
