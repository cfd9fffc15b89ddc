# Smoke test of the Linux initiator against targetd: discovery, login, the LUNs as /dev/sdX and
# /dev/sgN, sg3_utils identification, an ext4 file system that survives a remount, a vendor
# opcode the target does not know, logout, and a session that survives a target restart.
# Needs EXPECT_VENDOR, EXPECT_PRODUCT and EXPECT_LAST_LBA (LUN 0) from the harness.
. ./lib.sh

# An opcode in the vendor-specific range (C0h..FFh) that targetd does not define.
UNDEFINED_OPCODE=ee

step "discovery"
out=$(iscsi_discover)
echo "$out"
expect "$out" "$TARGET_PORTAL,1 $TARGET_IQN"

step "login"
out=$(iscsi_login)
echo "$out"
expect "$out" "successful"
sda=$(block_dev 0)
sdb=$(block_dev 1)
sg0=$(sg_dev 0)
sg1=$(sg_dev 1)
echo "LUN 0: $sda $sg0; LUN 1: $sdb $sg1"

step "identification"
out=$(run sg_inq "$sg0")
echo "$out"
expect "$out" "Vendor identification: $EXPECT_VENDOR" "Product identification: $EXPECT_PRODUCT" \
    "Peripheral device type: disk"
out=$(run sg_vpd -p 0x83 "$sg0")
echo "$out"
expect "$out" "Device Identification VPD page" "Addressed logical unit:" "NAA"
out=$(run sg_readcap "$sg0")
echo "$out"
expect "$out" "Last LBA=$EXPECT_LAST_LBA" "Logical block length=512 bytes"
out=$(run sg_luns "$sg0")
echo "$out"
expect "$out" "    0000000000000000" "    0001000000000000"
run sg_turs "$sg0"
run sg_turs "$sg1"

step "ext4 on LUN 1"
run mkfs.ext4 -F -q "$sdb"
mkdir -p /mnt/lun1
run mount -t ext4 "$sdb" /mnt/lun1
dd if=/dev/urandom of=/mnt/lun1/random.bin bs=64k count=64 2>/dev/null
echo "written by the guest tier" >/mnt/lun1/hello.txt
sum=$(md5sum </mnt/lun1/random.bin)
run sync
run umount /mnt/lun1
# Drop the page cache so the second mount reads the LUN, not memory.
echo 3 >/proc/sys/vm/drop_caches
run mount -t ext4 "$sdb" /mnt/lun1
[ "$(md5sum </mnt/lun1/random.bin)" = "$sum" ] || fail "random.bin changed across a remount"
[ "$(cat /mnt/lun1/hello.txt)" = "written by the guest tier" ] || fail "hello.txt changed"
run umount /mnt/lun1

step "undefined vendor opcode"
status=0
out=$(run sg_raw -v "$sg0" "$UNDEFINED_OPCODE" 00 00 00 00 00 2>&1) || status=$?
echo "$out"
[ "$status" -ne 0 ] || fail "sg_raw of opcode $UNDEFINED_OPCODE succeeded"
expect "$out" "SCSI Status: Check Condition" "Illegal Request" "Invalid command operation code"

step "logout"
out=$(iscsi_logout)
echo "$out"
expect "$out" "successful"
wait_for 10 sh -c '! ls /sys/class/scsi_device/*/device/block >/dev/null 2>&1' ||
    fail "LUN devices still present after logout: $(ls /sys/class/scsi_device)"

step "second login, across a target restart"
# Quick NOP-Outs, so the lost connection below is noticed in seconds.
for setting in noop_out_interval=1 noop_out_timeout=2; do
    run iscsiadm -m node -T "$TARGET_IQN" -p "$TARGET_PORTAL" -o update \
        -n "node.conn[0].timeo.${setting%=*}" -v "${setting#*=}"
done
iscsi_login
sdb=$(block_dev 1)
run mount -t ext4 "$sdb" /mnt/lun1
run umount /mnt/lun1
host restart-target
# The old session's connection is dead; iscsid reconnects and logs in again (session
# reinstatement), and I/O issued meanwhile waits for it.
dd if="$sdb" of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null || fail "LUN 1 unreadable after restart"
echo 3 >/proc/sys/vm/drop_caches
run mount -t ext4 "$sdb" /mnt/lun1
[ "$(md5sum </mnt/lun1/random.bin)" = "$sum" ] || fail "random.bin changed across a target restart"
run umount /mnt/lun1

step "session reinstatement after a lost connection"
# With the guest's link down the initiator gives up on the connection, while QEMU keeps the
# host side open, so targetd still holds the old session when the initiator logs in again with
# the same ISID: the target must reinstate it.
run ip link set eth0 down
wait_for 20 sh -c 'iscsiadm -m session -P 1 | grep -q "Connection State: TRANSPORT WAIT"' ||
    fail "the initiator did not notice the lost connection: $(iscsiadm -m session -P 1)"
run ip link set eth0 up
echo 3 >/proc/sys/vm/drop_caches
dd if="$sdb" of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null || fail "LUN 1 unreadable after reconnecting"
run mount -t ext4 "$sdb" /mnt/lun1
[ "$(md5sum </mnt/lun1/random.bin)" = "$sum" ] || fail "random.bin changed across a reconnection"
run umount /mnt/lun1
run iscsiadm -m session -P 1
out=$(iscsi_logout)
echo "$out"
expect "$out" "successful"
echo "smoke: all steps passed"
