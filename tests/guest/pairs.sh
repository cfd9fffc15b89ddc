# Volume pairs from a Linux initiator, with sg_raw and the vendor commands of docs/pairs.md:
# PAIR OUT CREATE (LUN 0 -> LUN 1), an ext4 file system written through /dev/sdX (LUN 0),
# PAIR OUT SPLIT, PAIR IN status read back; more files written after the split (copied
# before they are written, while the target side is still SPLIT-PENDING); once the target side
# is SPLIT, LUN 1 mounts and holds exactly the files written before the split.
# The harness paces the copy (copy_rate) so that the split has a backlog to reflect.
. ./lib.sh

# status: "SOURCE TARGET DIRTY-CHUNKS PERCENT NAME" from PAIR IN (C5h) REPORT PAIR STATUS.
pair_status() {
    # In a command substitution fail's message would be captured: show sg_raw's on stderr.
    sg_raw -r 96 -o /tmp/pair_status "$SG" c5 00 ff ff 00 00 00 00 00 00 00 00 00 60 00 00 \
        >/tmp/sg_raw.out 2>&1 || { cat /tmp/sg_raw.out >&2; exit 1; }
    _states=$(od -An -tu1 -j2 -N2 /tmp/pair_status | tr -s ' ' | sed 's/^ //')
    # DIRTY CHUNKS (bytes 24-31): the low four bytes are plenty for a 64 MiB pair.
    _dirty=$(od -An -tu1 -j28 -N4 /tmp/pair_status |
        awk '{print (($1 * 256 + $2) * 256 + $3) * 256 + $4}')
    _pct=$(od -An -tu1 -j5 -N1 /tmp/pair_status | tr -d ' ')
    _name=$(dd if=/tmp/pair_status bs=1 skip=64 count=32 2>/dev/null | tr -d '\000')
    echo "$_states $_dirty $_pct $_name"
}

# wait_states "S T" SECONDS: until the source and target state codes are S and T.
wait_states() {
    _want=$1
    _tries=$(($2 * 5))
    while :; do
        _now=$(pair_status)
        case $_now in "$_want "*) echo "$_now"; return 0 ;; esac
        _tries=$((_tries - 1))
        [ "$_tries" -gt 0 ] || fail "pair still '$_now', wanted states '$_want'"
        sleep 0.2
    done
}

step "login"
iscsi_discover >/dev/null
out=$(iscsi_login)
expect "$out" "successful"
SRC=$(block_dev 0)
TGT=$(block_dev 1)
SG=$(sg_dev 0)
echo "source $SRC, target $TGT, commands to $SG"

step "an unpaired LUN reports SIMPLEX"
now=$(pair_status)
echo "status: $now"
[ "$now" = "0 0 0 0 " ] || fail "unpaired status is '$now'"

step "PAIR OUT CREATE: LUN 0 -> LUN 1, named guestpair"
printf guestpair >/tmp/name
run sg_raw -s 9 -i /tmp/name "$SG" c4 01 00 00 00 01 00 00 00 00 00 00 00 09 00 00
now=$(wait_states "2 2" 30)
echo "status: $now"
expect "$now" "guestpair"

step "ext4 on the source, through $SRC"
run mkfs.ext4 -F -q "$SRC"
mkdir -p /mnt/src /mnt/tgt
run mount -t ext4 "$SRC" /mnt/src
mkdir /mnt/src/before
for i in 1 2 3 4 5 6; do
    dd if=/dev/urandom of=/mnt/src/before/file$i bs=65536 count=$((i * 4)) 2>/dev/null
done
echo "written before the split" >/mnt/src/before/note.txt
(cd /mnt/src && find before -type f | sort | xargs md5sum) >/tmp/before.md5
cat /tmp/before.md5
# Quiesce, as an application would before a backup: the split image is a clean file system.
run mount -o remount,ro /mnt/src

step "PAIR OUT SPLIT, answered at once"
run sg_raw "$SG" c4 02 ff ff 00 00 00 00 00 00 00 00 00 00 00 00
now=$(pair_status)
echo "status after split: $now"
case $now in
"4 3 "* | "4 4 "*) ;;
*) fail "after the split the states are '$now' (want source 4 SPLIT, target 3 or 4)" ;;
esac
split_dirty=$(echo "$now" | cut -d' ' -f3)
echo "chunks to reflect at the split: $split_dirty"

step "more files after the split"
run mount -o remount,rw /mnt/src
mkdir /mnt/src/after
for i in 1 2 3; do
    dd if=/dev/urandom of=/mnt/src/after/file$i bs=65536 count=8 2>/dev/null
done
# Overwrite a pre-split file in place too: the target must keep the old content.
dd if=/dev/urandom of=/mnt/src/before/file1 bs=65536 count=4 conv=notrunc 2>/dev/null
echo "changed after the split" >/mnt/src/before/note.txt
run sync
now=$(pair_status)
echo "status: $now"

step "wait for the target side to be SPLIT"
now=$(wait_states "4 4" 60)
echo "status: $now"

step "mount the target LUN: exactly the pre-split files"
# The kernel read LUN 1 when it scanned it (all zeros then): drop that from the page cache.
echo 3 >/proc/sys/vm/drop_caches
run mount -t ext4 "$TGT" /mnt/tgt
(cd /mnt/tgt && find . -path ./lost+found -prune -o -type f -print | sort) >/tmp/tgt.files
cat /tmp/tgt.files
printf './before/file%s\n' 1 2 3 4 5 6 >/tmp/want.files
echo ./before/note.txt >>/tmp/want.files
sort /tmp/want.files >/tmp/want.sorted
cmp /tmp/want.sorted /tmp/tgt.files || fail "the target's files differ from the pre-split set"
[ ! -e /mnt/tgt/after ] || fail "the target has the post-split directory"
(cd /mnt/tgt && md5sum -c /tmp/before.md5) || fail "pre-split file contents differ on the target"
[ "$(cat /mnt/tgt/before/note.txt)" = "written before the split" ] || fail "note.txt changed"
[ "$(cat /mnt/src/before/note.txt)" = "changed after the split" ] || fail "the source lost a write"
run umount /mnt/tgt
run umount /mnt/src

step "PAIR OUT DELETE"
run sg_raw "$SG" c4 04 ff ff 00 00 00 00 00 00 00 00 00 00 00 00
now=$(pair_status)
[ "$now" = "0 0 0 0 " ] || fail "after delete the status is '$now'"

step "logout"
out=$(iscsi_logout)
expect "$out" "successful"
echo "pairs: all steps passed"
