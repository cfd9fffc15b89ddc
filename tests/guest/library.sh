# A tape library under Linux, in one boot: mtx on the changer's /dev/sgN (status, inventory,
# position, load, unload, transfer, exchange, out through the mail slot and back); tapeinfo,
# mt, dd and tar on the drive holding the loaded cartridge; Bacula's mtx-changer script; and
# Bacula's own tests of a drive and an autochanger: btape `test` (which ends with its
# autochanger test) and btape `autochanger`; last, the operator's import through the mail
# slot and an alternate volume tag, which the host does (host actions import-NEW001L6,
# tag-NEW001L6).
#
# The library: 2 drives, 4 slots and 1 mail slot, cartridges TD0001L6 and TD0002L6 in slots
# 1 and 2. CHANGER_LUN and DRIVE_LUN (defaults 0 and 1) say where the changer and its first
# drive are; CHANGER_PRODUCT and DRIVE_PRODUCT the INQUIRY products expected; LOGIN=direct
# logs in without discovery (a target that advertises another address); CHECKS runs only
# the checks it names (by hand: most depend on the ones before).
#
# Each check runs as its own `sh -e ./test.sh NAME` and prints "@@verdict NAME pass|fail", so
# a peer's failed check does not hide how it does on the next ones; the harness reads the
# verdicts. The script fails when any check failed, unless VERDICTS_ONLY is set (a peer's run).
. ./lib.sh
CHANGER_LUN=${CHANGER_LUN:-0}
DRIVE_LUN=${DRIVE_LUN:-1}
CHANGER_PRODUCT=${CHANGER_PRODUCT:-VIRTUAL-CHANGER}
DRIVE_PRODUCT=${DRIVE_PRODUCT:-VIRTUAL-TAPE}

status() {
    run mtx -f "$CHANGER" status | tee /tmp/status
}

# st sees a new medium (UNIT ATTENTION) on its first command; mt status may report it.
settle() {
    mt -f "$TAPE" status >/dev/null 2>&1 || true
}

check_identification() {
    out=$(run sg_inq "$CHANGER")
    echo "$out"
    expect "$out" "medium changer" "Product identification: $CHANGER_PRODUCT"
}

check_status() {
    out=$(status)
    expect "$out" "2 Drives, 5 Slots ( 1 Import/Export )" "Data Transfer Element 0:Empty" \
        "Data Transfer Element 1:Empty" \
        "Storage Element 1:Full :VolumeTag=TD0001L6" "Storage Element 2:Full :VolumeTag=TD0002L6" \
        "Storage Element 3:Empty" "Storage Element 4:Empty" "Storage Element 5 IMPORT/EXPORT:Empty"
}

check_inventory() {
    run mtx -f "$CHANGER" inventory
    check_status
}

# POSITION TO ELEMENT: the robot to slot 2 (nothing moves)
check_position() {
    run mtx -f "$CHANGER" position 2
    check_status
}

check_load() {
    run mtx -f "$CHANGER" load 2 0
    out=$(status)
    expect "$out" "Data Transfer Element 0:Full (Storage Element 2 Loaded):VolumeTag = TD0002L6" \
        "Storage Element 2:Empty"
    settle
    run mt -f "$TAPE" rewind
}

check_tapeinfo() {
    out=$(run tapeinfo -f "$DRIVE_SG")
    echo "$out"
    # the compression lines come from mode page 0Fh, BufferedMode from the mode header, the
    # block size and density from the block descriptor
    expect "$out" "Product ID: '$DRIVE_PRODUCT" "Ready: yes" "BufferedMode: yes" "BlockSize: 0" \
        "DataCompEnabled: no" "DataCompCapable: no" "DataDeCompEnabled: no" "CompType: 0x0"
}

check_mt_dd() {
    run mt -f "$TAPE" rewind
    dd if=/dev/urandom of=/tmp/data bs=10240 count=20 2>/dev/null
    run dd if=/tmp/data of="$TAPE" bs=10240 2>&1
    run mt -f "$TAPE" rewind
    dd if="$TAPE" of=/tmp/back bs=10240 2>/dev/null
    cmp /tmp/data /tmp/back || fail "the records read back differ"
    out=$(run mt -f "$TAPE" status)
    echo "$out"
    expect "$out" "File number=1" "ONLINE"
}

check_tar() {
    mkdir -p /tmp/src/sub /tmp/dst
    dd if=/dev/urandom of=/tmp/src/big.bin bs=4096 count=20 2>/dev/null
    echo "hello from the library" >/tmp/src/sub/hello.txt
    run mt -f "$TAPE" eod
    (cd /tmp && tar -cf "$TAPE" src) || fail "tar -c to the tape"
    run mt -f "$TAPE" bsf 2
    run mt -f "$TAPE" fsf 1
    # busybox tar reads 512 bytes at a time; a variable-block tape wants whole records
    dd if="$TAPE" bs=262144 2>/dev/null | (cd /tmp/dst && tar -xf -) || fail "tar -x from the tape"
    cmp /tmp/src/big.bin /tmp/dst/src/big.bin || fail "big.bin differs after tar"
    [ "$(cat /tmp/dst/src/sub/hello.txt)" = "hello from the library" ] || fail "hello.txt differs"
}

check_unload() {
    run mt -f "$TAPE" offline
    run mtx -f "$CHANGER" unload
    out=$(status)
    expect "$out" "Data Transfer Element 0:Empty" "Storage Element 2:Full :VolumeTag=TD0002L6"
    if mt -f "$TAPE" status >/tmp/mt.out 2>&1 && grep -q ONLINE /tmp/mt.out; then
        cat /tmp/mt.out
        fail "the empty drive says it is online"
    fi
}

check_transfer() {
    run mtx -f "$CHANGER" transfer 2 3
    out=$(status)
    expect "$out" "Storage Element 2:Empty" "Storage Element 3:Full :VolumeTag=TD0002L6"
    run mtx -f "$CHANGER" load 3 0
    settle
    run mt -f "$TAPE" rewind
    dd if="$TAPE" of=/tmp/back2 bs=10240 2>/dev/null
    cmp /tmp/data /tmp/back2 || fail "the cartridge lost its data on the way"
    run mt -f "$TAPE" offline
    run mtx -f "$CHANGER" unload 3 0
}

check_refusals() {
    if run mtx -f "$CHANGER" transfer 1 3; then fail "a move to a full slot succeeded"; fi
    if run mtx -f "$CHANGER" transfer 4 2; then fail "a move from an empty slot succeeded"; fi
    out=$(status)
    expect "$out" "Storage Element 1:Full :VolumeTag=TD0001L6" \
        "Storage Element 3:Full :VolumeTag=TD0002L6" "Storage Element 4:Empty"
}

check_exchange() {
    # EXCHANGE MEDIUM: the two cartridges trade places in one command, and back
    run mtx -f "$CHANGER" exchange 1 3
    out=$(status)
    expect "$out" "Storage Element 1:Full :VolumeTag=TD0002L6" \
        "Storage Element 3:Full :VolumeTag=TD0001L6"
    run mtx -f "$CHANGER" exchange 1 3
    out=$(status)
    expect "$out" "Storage Element 1:Full :VolumeTag=TD0001L6" \
        "Storage Element 3:Full :VolumeTag=TD0002L6"
}

check_mail_slot() {
    run mtx -f "$CHANGER" transfer 3 5
    out=$(status)
    expect "$out" "Storage Element 5 IMPORT/EXPORT:Full :VolumeTag=TD0002L6" \
        "Storage Element 3:Empty"
    run mtx -f "$CHANGER" transfer 5 4
    out=$(status)
    expect "$out" "Storage Element 5 IMPORT/EXPORT:Empty" \
        "Storage Element 4:Full :VolumeTag=TD0002L6"
}

# Bacula's changer script, as its storage daemon calls it (%c %o %S %a %d)
MTX_CHANGER=/etc/bacula/scripts/mtx-changer

# chg COMMAND SLOT: mtx-changer on the changer and drive 0, its output on stdout
chg() {
    echo "+ mtx-changer $CHANGER $1 $2 $TAPE 0" >&2
    "$MTX_CHANGER" "$CHANGER" "$1" "$2" "$TAPE" 0
}

check_mtx_changer() {
    out=$(chg slots 0)
    [ "$out" = 5 ] || fail "mtx-changer slots said '$out'"
    out=$(chg list 0)
    echo "$out"
    [ "$(printf '%s\n' "$out" | sort | tr '\n' ' ')" = "1:TD0001L6 4:TD0002L6 " ] ||
        fail "mtx-changer list said '$out'"
    out=$(chg loaded 0)
    [ "$out" = 0 ] || fail "mtx-changer loaded said '$out' for the empty drive"
    chg load 4
    out=$(chg loaded 0)
    [ "$out" = 4 ] || fail "mtx-changer loaded said '$out' after loading slot 4"
}

# btape's storage daemon configuration: the drive as an autochanger's drive 0, with small
# blocks so that its 2 x 10,000-block test stays short under emulation
write_sd_conf() {
    cat >/tmp/bacula-sd.conf <<EOF
Storage {
  Name = guest-sd
  Working Directory = /var/lib/bacula
  Pid Directory = /tmp
}
Director {
  Name = guest-dir
  Password = "unused"
}
Device {
  Name = Drive-0
  Media Type = LTO
  Device Type = Tape
  Archive Device = $TAPE
  Automatic Mount = yes
  Always Open = yes
  Removable Media = yes
  Random Access = no
  Autochanger = yes
  Changer Device = $CHANGER
  Changer Command = "$MTX_CHANGER %c %o %S %a %d"
  Drive Index = 0
  Maximum Block Size = ${BTAPE_BLOCK:-1024}
}
Messages {
  Name = Standard
  Director = guest-dir = all
}
EOF
}

# btape NAME COMMANDS: btape on the drive with COMMANDS on its standard input; its output in
# /tmp/btape-NAME.out
btape_run() {
    write_sd_conf
    echo "+ btape: $2"
    printf '%s\nquit\n' "$2" | timeout "${BTAPE_TIMEOUT:-500}" btape -c /tmp/bacula-sd.conf \
        Drive-0 >/tmp/btape-"$1".out 2>&1 ||
        { tail -n 60 /tmp/btape-"$1".out; fail "btape $1 exited non-zero"; }
    grep -E '===|correct|OK|autochanger|Autochanger|[Ff]ail|ERR|status' /tmp/btape-"$1".out || true
}

btape_expect() {
    _out=$(cat /tmp/btape-"$1".out)
    shift
    if printf '%s\n' "$_out" | grep -q 'NOT correct\|Test failed\|test failed\|Bad '; then
        printf '%s\n' "$_out" | tail -n 60
        fail "btape reported a failure"
    fi
    for _pattern in "$@"; do
        printf '%s\n' "$_out" | grep -qF -- "$_pattern" || fail "btape did not say '$_pattern'"
    done
}

check_btape_test() {
    # the tape in drive 0 is the one from slot 4; the autochanger part unloads it and loads
    # slot 1's ("a blank tape that I can write on in Slot 1")
    btape_run test "test
y"
    # both files of 10,000 blocks read back (btape says "10000" after each), then blocks
    # found again by position, in both files
    [ "$(grep -c '^10000 blocks re-read correctly.$' /tmp/btape-test.out)" = 2 ] ||
        fail "btape did not read both files back"
    btape_expect test "Wrote 10000 blocks" \
        "=== Test Succeeded. End Write, rewind, and re-read test ===" \
        "Block 5 re-read correctly." "Block 10601 re-read correctly." \
        "Block 20000 re-read correctly." \
        "We should be in file 3. I am at file 3. This is correct!" \
        "We should be in file 4. I am at file 4. This is correct!" \
        "Block re-read correct. Test succeeded!" \
        "We should be in file 5. I am at file 5. This is correct!" \
        "=== End Forward space files test ===" \
        "Slot 4 loaded. I am going to unload it." "3303 Autochanger \"load 1 0\" status is OK." \
        "The test autochanger worked!!"
}

check_btape_autochanger() {
    # after `test`, slot 1's cartridge is in the drive (another, should `test` have failed)
    slot=$(chg loaded 0)
    [ "$slot" != 0 ] || fail "the drive is empty before btape autochanger"
    btape_run autochanger "autochanger
y"
    btape_expect autochanger "Slot $slot loaded. I am going to unload it." \
        "3302 Issuing autochanger \"unload $slot 0\" command." "unload status=OK 0" \
        "3303 Autochanger \"load 1 0\" status is OK." "The test autochanger worked!!"
    chg unload 1
    out=$(status)
    expect "$out" "Data Transfer Element 0:Empty" "Storage Element 1:Full :VolumeTag=TD0001L6" \
        "Storage Element 4:Full :VolumeTag=TD0002L6"
}

# The operator puts a new cartridge in the mail slot (host action import-NEW001L6): the
# changer's next command meets UNIT ATTENTION, IMPORT OR EXPORT ELEMENT ACCESSED, which mtx
# has to get past; the cartridge then goes to a slot.
check_operator_import() {
    host import-NEW001L6
    out=$(status)
    expect "$out" "Storage Element 5 IMPORT/EXPORT:Full :VolumeTag=NEW001L6"
    run mtx -f "$CHANGER" transfer 5 3
    out=$(status)
    expect "$out" "Storage Element 3:Full :VolumeTag=NEW001L6" \
        "Storage Element 5 IMPORT/EXPORT:Empty"
}

# The operator gives the cartridge an alternate volume tag (host action tag-NEW001L6)
check_alternate_tag() {
    host tag-NEW001L6
    out=$(status)
    expect "$out" "Storage Element 3:Full :VolumeTag=NEW001L6" "AlternateVolumeTag=NEW001-B"
}

if [ -n "${1:-}" ]; then
    "check_$1"
    exit 0
fi

step "login"
iscsi_connect "${LOGIN:-}"
CHANGER=$(sg_dev "$CHANGER_LUN")
DRIVE_SG=$(sg_dev "$DRIVE_LUN")
TAPE=$(tape_dev "$DRIVE_LUN")
echo "changer: $CHANGER drive 0: $TAPE ($DRIVE_SG)"
export CHANGER TAPE DRIVE_SG

failed=
for check in ${CHECKS:-identification status inventory position load tapeinfo mt_dd tar \
    unload transfer refusals exchange mail_slot mtx_changer btape_test btape_autochanger \
    operator_import alternate_tag}; do
    step "$check"
    if sh -e ./test.sh "$check"; then
        echo "@@verdict $check pass"
    else
        echo "@@verdict $check fail"
        failed="$failed $check"
    fi
done

step "logout"
out=$(iscsi_logout)
expect "$out" "successful"
if [ -n "$failed" ]; then
    # a peer's run (VERDICTS_ONLY) only reports them
    [ -n "${VERDICTS_ONLY:-}" ] || fail "checks failed:$failed"
    echo "library: checks failed:$failed"
else
    echo "library: all steps passed"
fi
