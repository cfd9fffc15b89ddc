# Several secondaries per primary (docs/pairs.md "Several secondaries per primary", docs/backup.md
# "Several mirrors of one volume"), from a Linux initiator with sg_raw and the vendor commands:
# three pairs of LUN 0 (m1 -> LUN 1, m2 -> LUN 2, m3 -> LUN 3), a fourth refused (80h/09h);
# a command naming the primary alone refused (80h/0Ah); each mirror split at its own instant,
# between writes, holds exactly the volume as it was then while the others keep mirroring;
# a reverse resync is refused while a sibling mirrors (80h/02h) and, once every sibling is
# split, puts the volume back to that mirror's image and leaves the other images alone; a
# resync then copies the restored chunks to a sibling.
. ./lib.sh

# status LUN: "SOURCE TARGET DIRTY SECONDARIES LUNS... NAME" from PAIR IN (C5h) with PAIR LUN =
# LUN, sent to LUN 0's sg node (the addressed LUN need not be in the pair).
pair_status() {
    _lun=$(printf '%02x %02x' $(($1 >> 8)) $(($1 & 255)))
    # In a command substitution fail's message would be captured: show sg_raw's on stderr.
    # shellcheck disable=SC2086
    sg_raw -r 136 -o /tmp/pair_status "$SG0" c5 00 $_lun 00 00 00 00 00 00 00 00 00 88 00 00 \
        >/tmp/sg_raw.out 2>&1 || { cat /tmp/sg_raw.out >&2; exit 1; }
    _states=$(od -An -tu1 -j2 -N2 /tmp/pair_status | tr -s ' ' | sed 's/^ //')
    _dirty=$(od -An -tu1 -j28 -N4 /tmp/pair_status |
        awk '{print (($1 * 256 + $2) * 256 + $3) * 256 + $4}')
    _count=$(od -An -tu1 -j128 -N1 /tmp/pair_status | tr -d ' ')
    _luns=$(od -An -tu1 -j130 -N6 /tmp/pair_status |
        awk '{print $1 * 256 + $2, $3 * 256 + $4, $5 * 256 + $6}')
    _name=$(dd if=/tmp/pair_status bs=1 skip=64 count=32 2>/dev/null | tr -d '\000')
    echo "$_states $_dirty $_count $_luns $_name"
}

# wait_states LUN "S T" SECONDS: until the pair LUN is in has source and target states S and T.
wait_states() {
    _tries=$(($3 * 5))
    while :; do
        _now=$(pair_status "$1")
        case $_now in "$2 "*) echo "$_now"; return 0 ;; esac
        _tries=$((_tries - 1))
        [ "$_tries" -gt 0 ] || fail "pair of LUN $1 still '$_now', wanted states '$2'"
        sleep 0.2
    done
}

# refused "ASC=80, ASCQ=09" SG CDB...: the command ends in CHECK CONDITION, ILLEGAL REQUEST,
# with that additional sense code.
refused() {
    _want=$1
    shift
    echo "+ sg_raw $* (to be refused with $_want)"
    if sg_raw "$@" >/tmp/sg_raw.out 2>&1; then
        cat /tmp/sg_raw.out
        fail "sg_raw $* succeeded"
    fi
    cat /tmp/sg_raw.out
    expect "$(cat /tmp/sg_raw.out)" "Illegal Request" "$_want"
}

# image NAME DEV: the first MiB of DEV, read past the page cache, into /tmp/NAME.read.
image() {
    echo 3 >/proc/sys/vm/drop_caches
    dd if="$2" of="/tmp/$1.read" bs=65536 count=16 2>/dev/null
}

# put NAME: a fresh MiB of random data into /tmp/NAME, written to the primary and synced.
put() {
    dd if=/dev/urandom of="/tmp/$1" bs=65536 count=16 2>/dev/null
    dd if="/tmp/$1" of="$SRC" bs=65536 count=16 conv=fsync 2>/dev/null
    echo "wrote $1: $(md5sum <"/tmp/$1")"
}

# holds DEV NAME: DEV's first MiB is exactly /tmp/NAME.
holds() {
    image check "$1"
    cmp "/tmp/$2" /tmp/check.read || fail "$1 does not hold image $2"
    echo "$1 holds $2"
}

step "login"
iscsi_discover >/dev/null
out=$(iscsi_login)
expect "$out" "successful"
SRC=$(block_dev 0)
SG0=$(sg_dev 0)
M1=$(block_dev 1)
M2=$(block_dev 2)
M3=$(block_dev 3)
SG2=$(sg_dev 2)
echo "primary $SRC ($SG0), mirrors $M1 $M2 $M3"

step "PAIR OUT CREATE three pairs of LUN 0: m1 -> LUN 1, m2 -> LUN 2, m3 -> LUN 3"
for n in 1 2 3; do
    printf "m$n" >/tmp/name
    run sg_raw -s 2 -i /tmp/name "$SG0" c4 01 00 00 00 0$n 00 00 00 00 00 00 00 02 00 00
done
for n in 1 2 3; do
    now=$(wait_states $n "2 2" 60)
    echo "LUN $n: $now"
    expect "$now" " 3 1 2 3 m$n"
done
# PAIR IN of the primary: its first pair by name, and all three secondaries.
now=$(pair_status 0)
echo "LUN 0: $now"
[ "$now" = "2 2 0 3 1 2 3 m1" ] || fail "the primary's status is '$now'"

step "a fourth pair of the primary is refused, PAIR TOO MANY SECONDARIES, nothing changes"
refused "ASC=80, ASCQ=09" "$SG0" c4 01 00 00 00 04 00 00 00 00 00 00 00 00 00 00
now=$(pair_status 4)
[ "$now" = "0 0 0 0 65535 65535 65535 " ] || fail "LUN 4 is '$now' after the refusal"
now=$(pair_status 0)
[ "$now" = "2 2 0 3 1 2 3 m1" ] || fail "the primary is '$now' after the refusal"

step "SPLIT naming only the primary is refused, PAIR LUN AMBIGUOUS"
refused "ASC=80, ASCQ=0a" "$SG0" c4 02 ff ff 00 00 00 00 00 00 00 00 00 00 00 00
refused "ASC=80, ASCQ=0a" "$SG2" c4 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00
for n in 1 2 3; do wait_states $n "2 2" 5; done

step "image A on the volume; split m1 (PAIR LUN 1, sent to LUN 0)"
put A
run sg_raw "$SG0" c4 02 00 01 00 00 00 00 00 00 00 00 00 00 00 00
now=$(wait_states 1 "4 4" 60)
echo "LUN 1: $now"
for n in 2 3; do
    now=$(pair_status $n)
    case $now in "2 2 "*) ;; *) fail "splitting m1 moved m$n to '$now'" ;; esac
done

step "image B; split m2 (through LUN 2 itself)"
put B
run sg_raw "$SG2" c4 02 ff ff 00 00 00 00 00 00 00 00 00 00 00 00
now=$(wait_states 2 "4 4" 60)
echo "LUN 2: $now"
now=$(pair_status 3)
case $now in "2 2 "*) ;; *) fail "splitting m2 moved m3 to '$now'" ;; esac

step "image C; m3 still mirrors it, the split mirrors keep theirs"
put C
now=$(wait_states 3 "2 2 0" 60)
holds "$M3" C
holds "$M1" A
holds "$M2" B

step "reverse resync of m1 while m3 mirrors: refused, PAIR WRONG STATE"
refused "ASC=80, ASCQ=02" "$SG0" c4 06 00 01 00 00 00 00 00 00 00 00 00 00 00 00
holds "$SRC" C

step "split m3; then the reverse resync of m1 puts the volume back to image A"
run sg_raw "$SG0" c4 02 00 03 00 00 00 00 00 00 00 00 00 00 00 00
wait_states 3 "4 4" 60
run sg_raw "$SG0" c4 06 00 01 00 00 00 00 00 00 00 00 00 00 00 00
# Once restored, m1 is DUPLEX again and mirrors as before.
now=$(wait_states 1 "2 2 0" 60)
echo "LUN 1 after the reverse resync: $now"
holds "$SRC" A
holds "$M1" A
holds "$M2" B
holds "$M3" C

step "resync m2: it mirrors the restored volume again"
run sg_raw "$SG0" c4 03 00 02 00 00 00 00 00 00 00 00 00 00 00 00
wait_states 2 "2 2 0" 60
holds "$M2" A
holds "$M3" C

step "PAIR OUT DELETE each pair by its secondary"
for n in 1 2 3; do
    run sg_raw "$SG0" c4 04 00 0$n 00 00 00 00 00 00 00 00 00 00 00 00
done
now=$(pair_status 0)
[ "$now" = "0 0 0 0 65535 65535 65535 " ] || fail "after the deletes LUN 0 is '$now'"

step "logout"
out=$(iscsi_logout)
expect "$out" "successful"
echo "pairs 1:N: all steps passed"
