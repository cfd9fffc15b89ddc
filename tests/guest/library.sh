# A tape library under Linux: mtx on the changer's /dev/sgN (status, inventory, load,
# unload, transfer, and out through the mail slot), tapeinfo, mt and dd on the drive
# holding the loaded cartridge. The harness serves the changer as LUN 0 with 4 slots, 1 mail slot,
# cartridges TD0001L6 and TD0002L6, and its drives as LUN 1 and 2.
. ./lib.sh

_tape_of_lun() {
    _h=$(_scsi_device_of_lun "$1") || return 1
    for _t in /sys/class/scsi_device/"$_h"/device/scsi_tape/nst*; do
        _n=${_t##*/}
        case $_n in nst*[alm]) continue ;; esac
        [ -e "/dev/$_n" ] && echo "/dev/$_n" && return 0
    done
    return 1
}

step "login"
iscsi_discover >/dev/null
out=$(iscsi_login)
expect "$out" "successful"
CHANGER=$(sg_dev 0)
wait_for 15 _tape_of_lun 1 || fail "drive LUN 1 has no /dev/nstN"
TAPE=$(_tape_of_lun 1)
echo "changer: $CHANGER drive 0: $TAPE"

step "identification"
out=$(run sg_inq "$CHANGER")
echo "$out"
expect "$out" "medium changer" "Product identification: VIRTUAL-CHANGER"

step "mtx status"
out=$(run mtx -f "$CHANGER" status)
echo "$out"
expect "$out" "2 Drives, 5 Slots ( 1 Import/Export )" "Data Transfer Element 0:Empty" \
    "Storage Element 1:Full :VolumeTag=TD0001L6" "Storage Element 2:Full :VolumeTag=TD0002L6" \
    "Storage Element 3:Empty" "Storage Element 5 IMPORT/EXPORT:Empty"

step "mtx inventory"
run mtx -f "$CHANGER" inventory

step "mtx load 2 0, and the drive works as a tape"
run mtx -f "$CHANGER" load 2 0
out=$(run mtx -f "$CHANGER" status)
echo "$out"
expect "$out" "Data Transfer Element 0:Full (Storage Element 2 Loaded):VolumeTag = TD0002L6" \
    "Storage Element 2:Empty"
# st sees the new medium (UNIT ATTENTION) on its first command; mt status may report it.
mt -f "$TAPE" status >/dev/null 2>&1 || true
run mt -f "$TAPE" rewind
out=$(run tapeinfo -f "$(sg_dev 1)")
echo "$out"
# the compression lines come from mode page 0Fh, BufferedMode from the mode header, the
# block size and density from the block descriptor
expect "$out" "Product ID: 'VIRTUAL-TAPE    '" "Ready: yes" "BufferedMode: yes" "BlockSize: 0" \
    "Density Code: 0x80" "DataCompEnabled: no" "DataCompCapable: no" "DataDeCompEnabled: no" \
    "CompType: 0x0" "MaxBlock: 8388608"
dd if=/dev/urandom of=/tmp/data bs=10240 count=20 2>/dev/null
run dd if=/tmp/data of="$TAPE" bs=10240 2>&1
run mt -f "$TAPE" rewind
dd if="$TAPE" of=/tmp/back bs=10240 2>/dev/null
cmp /tmp/data /tmp/back || fail "the record read back differs"

step "mtx unload (back to its slot), the drive has no medium"
run mt -f "$TAPE" offline
run mtx -f "$CHANGER" unload
out=$(run mtx -f "$CHANGER" status)
echo "$out"
expect "$out" "Data Transfer Element 0:Empty" "Storage Element 2:Full :VolumeTag=TD0002L6"
if mt -f "$TAPE" status >/tmp/mt.out 2>&1 && grep -q ONLINE /tmp/mt.out; then
    cat /tmp/mt.out
    fail "the empty drive says it is online"
fi

step "mtx transfer 2 3, then load from slot 3: the data is on the cartridge"
run mtx -f "$CHANGER" transfer 2 3
out=$(run mtx -f "$CHANGER" status)
expect "$out" "Storage Element 2:Empty" "Storage Element 3:Full :VolumeTag=TD0002L6"
run mtx -f "$CHANGER" load 3 0
mt -f "$TAPE" status >/dev/null 2>&1 || true
run mt -f "$TAPE" rewind
dd if="$TAPE" of=/tmp/back2 bs=10240 2>/dev/null
cmp /tmp/data /tmp/back2 || fail "the cartridge lost its data on the way"
run mt -f "$TAPE" offline
run mtx -f "$CHANGER" unload 3 0

step "refusals: a full slot, an empty slot"
if run mtx -f "$CHANGER" transfer 1 3; then fail "a move to a full slot succeeded"; fi
if run mtx -f "$CHANGER" transfer 4 2; then fail "a move from an empty slot succeeded"; fi
out=$(run mtx -f "$CHANGER" status)
expect "$out" "Storage Element 1:Full :VolumeTag=TD0001L6" "Storage Element 3:Full :VolumeTag=TD0002L6"

step "out through the mail slot"
run mtx -f "$CHANGER" transfer 1 5
out=$(run mtx -f "$CHANGER" status)
echo "$out"
expect "$out" "Storage Element 5 IMPORT/EXPORT:Full :VolumeTag=TD0001L6" "Storage Element 1:Empty"

step "logout"
out=$(iscsi_logout)
expect "$out" "successful"
echo "library: all steps passed"
