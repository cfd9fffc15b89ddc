"""The Linux kernel's initiator, in a QEMU guest: ext4 on an RBD LUN, and sg_persist through
two gateways on one image."""

from __future__ import annotations

import sys
from pathlib import Path

from ceph_fixtures import ImageFactory, rbd_lun_toml, target_toml
from cluster import CephCluster
from conftest import DaemonFactory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "guest"))

from gateways import PairFactory, gateway_pair
from guest_vm import HOST_FROM_GUEST, run_guest, start_for_guest

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


PR_SCRIPT = r""". ./lib.sh
step "login through gateway A, then through gateway B"
run iscsiadm -m node -o new -T "$TARGET_IQN" -p "$TARGET_PORTAL"
iscsi_login
a=$(block_dev 0)
run iscsiadm -m node -o new -T "$TARGET_IQN" -p "$PORTAL_B"
run iscsiadm -m node -T "$TARGET_IQN" -p "$PORTAL_B" --login
# Both disks attached (the second SCSI device comes a moment before its sdX).
wait_for 15 sh -c '[ $(ls -d /sys/class/scsi_device/*/device/block/* | wc -l) -eq 2 ]' ||
    fail "no second path"
b=""
for d in /sys/class/scsi_device/*/device/block/*; do
    [ "/dev/${d##*/}" = "$a" ] || b="/dev/${d##*/}"
done
[ -n "$b" ] || fail "no block device through B"
wait_for 15 test -e "$b" || fail "$b did not appear"
echo "through A: $a, through B: $b"
step "sg_persist registers and reserves (Write Exclusive) through A"
run sg_persist --out --register --param-sark=0x1234abcd "$a"
run sg_persist --out --reserve --param-rk=0x1234abcd --prout-type=1 "$a"
step "seen through B"
out=$(run sg_persist --in --read-keys "$b")
expect "$out" "1 registered reservation key follows" "0x1234abcd"
out=$(run sg_persist --in --read-reservation "$b")
expect "$out" "Key=0x1234abcd" "type: Write Exclusive"
step "enforced through B: this host's port through B is another I_T nexus, not registered"
out=$(sg_raw -s 512 -i /dev/zero "$b" 2a 00 00 00 00 00 00 00 01 00 2>&1 || true)
expect "$out" "Reservation Conflict"
run sg_raw -s 512 -i /dev/zero "$a" 2a 00 00 00 00 00 00 00 01 00
run sg_raw -r 512 "$b" 28 00 00 00 00 00 00 00 01 00
step "released through A: B writes"
run sg_persist --out --release --param-rk=0x1234abcd --prout-type=1 "$a"
run sg_raw -s 512 -i /dev/zero "$b" 2a 00 00 00 00 00 00 00 01 00
echo "pr guest: all steps passed"
"""


def test_sg_persist_reserves_through_one_gateway_and_is_enforced_through_the_other(
    gateway_pair: PairFactory, new_image: ImageFactory
) -> None:
    """Linux's initiator in a QEMU guest logs in through both gateways (two paths, two SCSI
    devices, one LU); sg_persist registers and reserves through A, reads the key and the
    reservation through B, and a write through B meets RESERVATION CONFLICT."""
    pair = gateway_pair(new_image("64M"), hold_ms=0, unit_attention=False)
    out = run_guest(PR_SCRIPT, pair.a, env={"PORTAL_B": f"{HOST_FROM_GUEST}:{pair.b.port}"})
    assert "pr guest: all steps passed" in out
