# Helpers for guest test scripts; the harness puts this file beside the script as
# /guest/lib.sh and the script sources it first: `. ./lib.sh`.
#
# The script runs under `sh -e` (dash) as root in the guest, with PATH preferring the real tools
# (open-iscsi, sg3_utils, mt-st, e2fsprogs) over busybox applets. ./env (written by the harness)
# sets TARGET_PORTAL (HOST:PORT the guest dials) and TARGET_IQN, plus any extra variables a
# test passes. A non-zero exit fails the test, with this console output in the message.

. ./env

# Marks a phase in the console output, so a failure message shows how far the script got.
step() {
    echo "== $*"
}

# On stderr (the console too), so a helper failing inside $(...) still shows why.
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# Runs a command with its output shown in the console log; its exit status is returned.
run() {
    echo "+ $*"
    "$@"
}

# expect TEXT PATTERN...: every fixed-string PATTERN must occur in TEXT.
expect() {
    _text=$1
    shift
    for _pattern in "$@"; do
        printf '%s\n' "$_text" | grep -qF -- "$_pattern" || fail "expected '$_pattern' in:
$_text"
    done
}

# Asks the harness to do something on the host ("restart-target", or an action the test
# registered) and waits until it is done. The request and the reply travel over the serial
# console: the harness answers "ok" or "error MESSAGE" on the guest's standard input.
host() {
    echo "@@host $*"
    read -r _reply || fail "no answer from the host to '$*'"
    [ "$_reply" = ok ] || fail "host action '$*' failed: $_reply"
}

iscsi_discover() {
    run iscsiadm -m discovery -t sendtargets -p "$TARGET_PORTAL"
}

iscsi_login() {
    run iscsiadm -m node -T "$TARGET_IQN" -p "$TARGET_PORTAL" --login
}

# iscsi_connect [direct]: logs in to TARGET_IQN, found by discovery or, with "direct", at
# TARGET_PORTAL alone (for a target that advertises another address).
iscsi_connect() {
    if [ "${1:-}" = direct ]; then
        run iscsiadm -m node -o new -T "$TARGET_IQN" -p "$TARGET_PORTAL"
    else
        iscsi_discover >/dev/null
    fi
    _out=$(iscsi_login)
    expect "$_out" "successful"
}

iscsi_logout() {
    run iscsiadm -m node -T "$TARGET_IQN" -p "$TARGET_PORTAL" --logout
}

# wait_for SECONDS COMMAND...: retries COMMAND every 0.2 s until it succeeds.
wait_for() {
    _tries=$(($1 * 5))
    shift
    while ! "$@" >/dev/null 2>&1; do
        _tries=$((_tries - 1))
        [ "$_tries" -gt 0 ] || return 1
        sleep 0.2
    done
}

_scsi_device_of_lun() {
    for _d in /sys/class/scsi_device/*:*:*:"$1"; do
        [ -e "$_d" ] && echo "${_d##*/}" && return 0
    done
    return 1
}

_block_of_lun() {
    _h=$(_scsi_device_of_lun "$1") || return 1
    for _b in /sys/class/scsi_device/"$_h"/device/block/*; do
        # The node appears when the disk is added, a moment before the disk is live: opening
        # it in between fails with ENXIO, so wait until it opens.
        [ -e "/dev/${_b##*/}" ] && (: <"/dev/${_b##*/}") 2>/dev/null &&
            echo "/dev/${_b##*/}" && return 0
    done
    return 1
}

_sg_of_lun() {
    _h=$(_scsi_device_of_lun "$1") || return 1
    for _g in /sys/class/scsi_device/"$_h"/device/scsi_generic/*; do
        [ -e "/dev/${_g##*/}" ] && echo "/dev/${_g##*/}" && return 0
    done
    return 1
}

# The non-rewinding st node of a tape LUN.
_tape_of_lun() {
    _h=$(_scsi_device_of_lun "$1") || return 1
    for _t in /sys/class/scsi_device/"$_h"/device/scsi_tape/nst*; do
        _n=${_t##*/}
        case $_n in nst*[alm]) continue ;; esac
        [ -e "/dev/$_n" ] && echo "/dev/$_n" && return 0
    done
    return 1
}

# block_dev LUN / sg_dev LUN / tape_dev LUN: the /dev node of a LUN of the (only) session, waiting up to 15 s
# for the kernel to scan it.
block_dev() {
    wait_for 15 _block_of_lun "$1" || fail "LUN $1 has no /dev/sdX; SCSI devices: $(ls /sys/class/scsi_device)"
    _block_of_lun "$1"
}

sg_dev() {
    wait_for 15 _sg_of_lun "$1" || fail "LUN $1 has no /dev/sgN; SCSI devices: $(ls /sys/class/scsi_device)"
    _sg_of_lun "$1"
}

tape_dev() {
    wait_for 15 _tape_of_lun "$1" || fail "LUN $1 has no /dev/nstN; SCSI devices: $(ls /sys/class/scsi_device)"
    _tape_of_lun "$1"
}
