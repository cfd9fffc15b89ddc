# Growing a LUN online, as an administrator does it (docs/operations.md, "Growing a LUN"): ext4
# on the LUN, the host grows the LUN with a reload, the kernel reports the unit attention and
# keeps the old size, `iscsiadm -m session --rescan` shows the new one, `resize2fs` grows the
# mounted file system, and a file larger than the whole old LUN fits while the first file keeps
# its checksum. Needs OLD_SECTORS, NEW_SECTORS (512-byte), OLD_BLOCKS, NEW_BLOCKS (4 KiB) and
# BIG_MIB from the harness.
. ./lib.sh

sectors() {
    cat "/sys/block/${sda#/dev/}/size"
}

block_count() {
    dumpe2fs -h "$sda" 2>/dev/null | sed -n 's/^Block count: *//p'
}

# The file system's size as df reports it, in KiB.
df_size() {
    df -k /mnt/grow | awk 'NR == 2 {print $2}'
}

step "login"
iscsi_connect
sda=$(block_dev 0)
[ "$(sectors)" = "$OLD_SECTORS" ] || fail "$sda has $(sectors) sectors, not $OLD_SECTORS"

step "ext4 with a file"
run mkfs.ext4 -F -q -b 4096 "$sda"
mkdir -p /mnt/grow
run mount -t ext4 "$sda" /mnt/grow
dd if=/dev/urandom of=/mnt/grow/before.bin bs=64k count=64 2>/dev/null
before_sum=$(md5sum </mnt/grow/before.bin)
run sync
[ "$(block_count)" = "$OLD_BLOCKS" ] || fail "the new file system has $(block_count) blocks"
old_df=$(df_size)
run df -k /mnt/grow

step "the host grows the LUN"
host grow-lun
# The next command to the LUN gets CAPACITY DATA HAS CHANGED, which the kernel logs, and
# retries; the disk keeps its old size until it is rescanned.
run dd if="$sda" of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null
wait_for 10 sh -c 'dmesg | grep -qF "Capacity data has changed"' ||
    fail "no 'Capacity data has changed' in the kernel log: $(dmesg | tail -20)"
[ "$(sectors)" = "$OLD_SECTORS" ] || fail "$sda changed size before a rescan: $(sectors)"

step "rescan"
run iscsiadm -m session --rescan
wait_for 10 sh -c "[ \"\$(cat /sys/block/${sda#/dev/}/size)\" = $NEW_SECTORS ]" ||
    fail "$sda has $(sectors) sectors after the rescan, not $NEW_SECTORS"
out=$(dmesg)
expect "$out" "${sda#/dev/}: detected capacity change from $OLD_SECTORS to $NEW_SECTORS"

step "resize2fs, mounted"
run resize2fs "$sda"
[ "$(block_count)" = "$NEW_BLOCKS" ] || fail "after resize2fs: $(block_count) blocks"
run df -k /mnt/grow
new_df=$(df_size)
# Both sizes lie within the file system's one block group, whose metadata is already there:
# df grows by exactly the added blocks.
[ $((new_df - old_df)) = $(((NEW_BLOCKS - OLD_BLOCKS) * 4)) ] ||
    fail "df went from $old_df to $new_df KiB"

step "a file larger than the old LUN"
dd if=/dev/urandom of=/mnt/grow/after.bin bs=1M count="$BIG_MIB" 2>/dev/null
after_sum=$(md5sum </mnt/grow/after.bin)
run sync
run umount /mnt/grow
echo 3 >/proc/sys/vm/drop_caches
run e2fsck -f -n "$sda"
run mount -t ext4 "$sda" /mnt/grow
[ "$(md5sum </mnt/grow/before.bin)" = "$before_sum" ] || fail "before.bin changed"
[ "$(md5sum </mnt/grow/after.bin)" = "$after_sum" ] || fail "after.bin changed"
run umount /mnt/grow
iscsi_logout
echo "grow: all steps passed"
