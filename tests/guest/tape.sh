# The tape LUN under Linux's st driver: mt status and rewind, files written with dd (st
# writes a file mark when a written file is closed), mt fsf to the second file and back,
# an empty file from an explicit mt weof, reading past the last mark, odd-sized variable
# records read with a larger buffer, and tar to the tape and back.
# Needs TAPE_LUN (the tape's LUN number) from the harness. TAPE_PRODUCT (default
# VIRTUAL-TAPE) is the INQUIRY product expected; TAPE_SCOPE=basic stops after the basic
# write, mark, rewind and read-back round trip (what the tgt anchor runs); TAPE_LOGIN=direct
# logs in to TARGET_PORTAL without discovery (for a target that advertises another address).
. ./lib.sh
TAPE_PRODUCT=${TAPE_PRODUCT:-VIRTUAL-TAPE}

step "login"
iscsi_connect "${TAPE_LOGIN:-}"
TAPE=$(tape_dev "$TAPE_LUN")
echo "tape: $TAPE"

step "identification"
sg=$(sg_dev "$TAPE_LUN")
out=$(run sg_inq "$sg")
echo "$out"
expect "$out" "Peripheral device type: tape" "RMB=1" "Product identification: $TAPE_PRODUCT"

step "mt status and rewind"
out=$(run mt -f "$TAPE" status)
echo "$out"
expect "$out" "File number=0, block number=0" "BOT"
run mt -f "$TAPE" rewind

step "three files with dd"
dd if=/dev/urandom of=/tmp/f1 bs=10240 count=7 2>/dev/null
dd if=/dev/urandom of=/tmp/f2 bs=10240 count=13 2>/dev/null
dd if=/dev/urandom of=/tmp/f3 bs=10240 count=2 2>/dev/null
for f in f1 f2 f3; do
    run dd if=/tmp/$f of="$TAPE" bs=10240 2>&1
done
out=$(run mt -f "$TAPE" status)
echo "$out"
expect "$out" "File number=3, block number=0"

step "mt fsf to the second file, read it back"
run mt -f "$TAPE" rewind
run mt -f "$TAPE" fsf 1
out=$(run mt -f "$TAPE" status)
echo "$out"
expect "$out" "File number=1, block number=0"
dd if="$TAPE" of=/tmp/r2 bs=10240 2>/dev/null
cmp /tmp/f2 /tmp/r2 || fail "file 2 read back differs"
# The read stopped at the file mark and the head is past it: the next read is file 3.
dd if="$TAPE" of=/tmp/r3 bs=10240 2>/dev/null
cmp /tmp/f3 /tmp/r3 || fail "file 3 read back differs"
run mt -f "$TAPE" rewind
dd if="$TAPE" of=/tmp/r1 bs=10240 2>/dev/null
cmp /tmp/f1 /tmp/r1 || fail "file 1 read back differs"

if [ "${TAPE_SCOPE:-full}" = basic ]; then
    run mt -f "$TAPE" rewind
    out=$(iscsi_logout)
    expect "$out" "successful"
    echo "tape: all steps passed"
    exit 0
fi

step "mt bsf / fsf around a mark"
# The read above left the head past file 1's mark (BSD semantics): rewind to count from 0.
run mt -f "$TAPE" rewind
run mt -f "$TAPE" fsf 2
run mt -f "$TAPE" bsfm 2
out=$(run mt -f "$TAPE" status)
echo "$out"
expect "$out" "File number=1, block number=0"
dd if="$TAPE" of=/tmp/r2b bs=10240 2>/dev/null
cmp /tmp/f2 /tmp/r2b || fail "file 2 after bsfm differs"

step "an empty file from mt weof, and reading past the last mark"
run mt -f "$TAPE" eod
run mt -f "$TAPE" weof 1
out=$(run mt -f "$TAPE" status)
echo "$out"
expect "$out" "File number=4, block number=0"
run mt -f "$TAPE" rewind
run mt -f "$TAPE" fsf 3
n=$(dd if="$TAPE" bs=10240 2>/dev/null | wc -c)
[ "$n" -eq 0 ] || fail "the empty file gave $n bytes"
# Past the last file mark is end of data: no data (and no hang).
n=$(dd if="$TAPE" bs=10240 2>/dev/null | wc -c) || true
[ "$n" -eq 0 ] || fail "reading past the last mark gave $n bytes"

step "odd-sized variable records read with a larger buffer"
run mt -f "$TAPE" eod
run mt -f "$TAPE" setblk 0
for size in 1 777 4097 65535; do
    dd if=/dev/urandom of=/tmp/odd$size bs=$size count=1 2>/dev/null
done
# One write(2) per record, all through one open of the tape (one file on it).
(
    for size in 1 777 4097 65535; do
        dd if=/tmp/odd$size bs=$size count=1 2>/dev/null || exit 1
    done
) >"$TAPE" || fail "writing the odd-sized records"
run mt -f "$TAPE" bsf 1
run mt -f "$TAPE" bsf 1
run mt -f "$TAPE" fsf 1
for size in 1 777 4097 65535; do
    dd if="$TAPE" of=/tmp/back$size bs=131072 count=1 2>/dev/null || fail "reading the $size-byte record"
    got=$(wc -c </tmp/back$size)
    [ "$got" -eq "$size" ] || fail "the $size-byte record read back as $got bytes"
    cmp /tmp/odd$size /tmp/back$size || fail "the $size-byte record differs"
done

step "tar to the tape and back"
mkdir -p /tmp/src/sub
dd if=/dev/urandom of=/tmp/src/big.bin bs=4096 count=50 2>/dev/null
echo "hello from the tape" >/tmp/src/sub/hello.txt
run mt -f "$TAPE" eod
out=$(run mt -f "$TAPE" status)
file=$(printf '%s\n' "$out" | sed -n 's/.*File number=\([0-9]*\).*/\1/p')
(cd /tmp && tar -cf "$TAPE" src) || fail "tar -c to the tape"
run mt -f "$TAPE" rewind
run mt -f "$TAPE" fsf "$file"
mkdir -p /tmp/dst
# busybox tar writes records of whatever size each write(2) has and reads 512 bytes at a
# time, which a variable-block tape refuses for a longer record (ILI): read whole records
# with dd and a buffer at least as large as any of them.
dd if="$TAPE" bs=262144 2>/dev/null | (cd /tmp/dst && tar -xf -) || fail "tar -x from the tape"
cmp /tmp/src/big.bin /tmp/dst/src/big.bin || fail "big.bin differs after tar"
[ "$(cat /tmp/dst/src/sub/hello.txt)" = "hello from the tape" ] || fail "hello.txt differs"

step "fixed-block mode"
run mt -f "$TAPE" eod
run mt -f "$TAPE" setblk 512
dd if=/dev/urandom of=/tmp/fixed bs=512 count=40 2>/dev/null
run dd if=/tmp/fixed of="$TAPE" bs=2048 2>&1
run mt -f "$TAPE" bsf 2
run mt -f "$TAPE" fsf 1
dd if="$TAPE" of=/tmp/fixed-back bs=4096 2>/dev/null
cmp /tmp/fixed /tmp/fixed-back || fail "fixed-block file differs"
run mt -f "$TAPE" setblk 0

step "logout"
run mt -f "$TAPE" rewind
out=$(iscsi_logout)
expect "$out" "successful"
echo "tape: all steps passed"
