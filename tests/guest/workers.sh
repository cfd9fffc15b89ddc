# Worker processes (docs/workers.md) with the Linux initiator: discovery at the portal lists
# both targets at the portal's address; each login is redirected (login status 0101h) to
# the worker serving its target, through QEMU's address translation; data written to each
# target reads back; both log out. Needs SECOND_IQN from the harness.
. ./lib.sh

step "discovery at the portal"
out=$(iscsi_discover)
echo "$out"
expect "$out" "$TARGET_PORTAL,1 $TARGET_IQN" "$TARGET_PORTAL,1 $SECOND_IQN"

step "login to both targets, each redirected to its worker"
out=$(run iscsiadm -m node -p "$TARGET_PORTAL" --login)
echo "$out"
expect "$out" "Login to [iface: default, target: $TARGET_IQN" \
    "Login to [iface: default, target: $SECOND_IQN"
wait_for 15 sh -c '[ "$(ls -d /sys/class/scsi_device/*/device/block 2>/dev/null | wc -l)" -eq 2 ]' ||
    fail "expected two disks: $(ls /sys/class/scsi_device)"
run iscsiadm -m session -P 1

# Each disk's first block, read from the LUN (not the page cache): "disk 1" and "disk 2".
read_back() {
    echo 3 >/proc/sys/vm/drop_caches
    seen=""
    for dev in /sys/class/scsi_device/*/device/block/*; do
        disk=/dev/${dev##*/}
        seen="$seen $(dd if="$disk" bs=512 count=1 iflag=direct 2>/dev/null | head -c 6)"
    done
    echo "read back$1:$seen"
    expect "$seen" "disk 1" "disk 2"
}

step "each disk keeps its own data"
n=0
for dev in /sys/class/scsi_device/*/device/block/*; do
    disk=/dev/${dev##*/}
    n=$((n + 1))
    printf 'disk %s\n' "$n" | dd of="$disk" bs=512 count=1 conv=sync oflag=direct 2>/dev/null ||
        fail "write to $disk failed"
done
read_back ""

step "a killed worker: the initiator logs in again through the portal"
# Quick NOP-Outs, so the lost connection is noticed in seconds; then the host kills the
# second target's worker. iscsid reconnects at the portal, is redirected to the new worker,
# and the read issued meanwhile waits for it.
for iqn in "$TARGET_IQN" "$SECOND_IQN"; do
    for setting in noop_out_interval=1 noop_out_timeout=2; do
        run iscsiadm -m node -T "$iqn" -p "$TARGET_PORTAL" -o update \
            -n "node.conn[0].timeo.${setting%=*}" -v "${setting#*=}"
    done
done
out=$(run iscsiadm -m node -p "$TARGET_PORTAL" --logout)
out=$(run iscsiadm -m node -p "$TARGET_PORTAL" --login)
expect "$out" "successful"
wait_for 15 sh -c '[ "$(ls -d /sys/class/scsi_device/*/device/block 2>/dev/null | wc -l)" -eq 2 ]' ||
    fail "expected two disks again: $(ls /sys/class/scsi_device)"
host kill-second-worker
read_back " after the kill"
run iscsiadm -m session -P 1

step "logout"
out=$(run iscsiadm -m node -p "$TARGET_PORTAL" --logout)
echo "$out"
expect "$out" "successful"
echo "workers: all steps passed"
