# EXTENDED COPY from a Linux initiator with sg3_utils: sg_copy_results reads the operating
# parameters, sg_xcopy copies LUN 0 to LUN 1, sg_raw sends a block-to-tape parameter list
# (PARAMS_BACKUP, built by the harness) and the tape is read back with dd from /dev/nstN,
# then sg_raw restores the tape to LUN 1 with segment 01h (PARAMS_RESTORE), and
# sg_copy_results reports the copy's status (list identifier 5).
. ./lib.sh

# cdb83 LENGTH: an EXTENDED COPY(LID1) CDB for sg_raw with that parameter list length.
cdb83() {
    printf '83 00 00 00 00 00 00 00 00 00 %02x %02x %02x %02x 00 00' \
        $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255))
}

step "login"
iscsi_connect
SD0=$(block_dev 0); SD1=$(block_dev 1); SG0=$(sg_dev 0); SG1=$(sg_dev 1); SGT=$(sg_dev 2)
TAPE=$(tape_dev 2)
echo "disks $SD0 $SD1 ($SG0 $SG1), tape $TAPE ($SGT)"
# sg_raw reports a pending unit attention as a failure: take them first.
for sg in "$SG0" "$SG1" "$SGT"; do
    sg_turs "$sg" >/dev/null 2>&1 || sg_turs "$sg" >/dev/null 2>&1 || true
done

step "third-party copy: 3PC, VPD 8Fh, operating parameters"
out=$(run sg_inq "$SG0")
expect "$out" "3PC=1"
out=$(run sg_vpd -p tpc "$SG0")
echo "$out"
out=$(run sg_copy_results --params "$SG0")
echo "$out"
expect "$out" "16" "256"

step "sg_xcopy LUN 0 to LUN 1"
dd if=/dev/urandom of=/tmp/img bs=65536 count=16 2>/dev/null
run dd if=/tmp/img of="$SD0" bs=65536 conv=fsync 2>&1
run sg_xcopy if="$SG0" of="$SG1" bs=512 count=2048 2>&1
echo 3 >/proc/sys/vm/drop_caches
dd if="$SD1" of=/tmp/copy bs=65536 count=16 2>/dev/null
cmp /tmp/img /tmp/copy || fail "sg_xcopy: LUN 1 differs from LUN 0"

step "block to tape with sg_raw (segment 00h, then a file mark)"
printf '%b' "$PARAMS_BACKUP" >/tmp/backup.bin
n=$(wc -c </tmp/backup.bin)
run sg_raw -s "$n" -i /tmp/backup.bin "$SGT" $(cdb83 "$n") 2>&1
run mt -f "$TAPE" rewind
dd if="$TAPE" of=/tmp/tape bs=131072 2>/dev/null
cmp /tmp/img /tmp/tape || fail "the tape differs from LUN 0"

step "tape to block with sg_raw (segment 01h)"
run mt -f "$TAPE" rewind
printf '%b' "$PARAMS_RESTORE" >/tmp/restore.bin
n=$(wc -c </tmp/restore.bin)
run sg_raw -s "$n" -i /tmp/restore.bin "$SG1" $(cdb83 "$n") 2>&1
out=$(run sg_copy_results --status --list_id=5 "$SG1")
echo "$out"
expect "$out" "ompleted"
echo 3 >/proc/sys/vm/drop_caches
dd if="$SD1" of=/tmp/restored bs=65536 skip=32 count=16 2>/dev/null
cmp /tmp/img /tmp/restored || fail "the restore differs from the tape"

step "logout"
out=$(iscsi_logout)
expect "$out" "successful"
echo "xcopy: all steps passed"
