"""dm-multipath in a QEMU guest over two gateways on one RBD image (docs/alua.md, "Linux
dm-multipath"): a verifying writer through the multipath device, gateway A killed with
kill -9 mid-stream, every write acknowledged, every block read back in the guest and in
``rbd export``, and A, restarted, back as the non-optimized path. One guest boot."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ceph_fixtures import ImageFactory, export_image
from cluster import CephCluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "guest"))

from gateways import PairFactory, gateway_pair
from guest_vm import HOST_FROM_GUEST, run_guest

BLOCK = 4096
BLOCKS = 512  # 2 MiB, one O_DIRECT write each
KILL_AFTER = 64  # acknowledged writes before gateway A is killed

# The configuration docs/alua.md shows. group_by_prio + prio alua: the lock holder's path
# (active/optimized, prio 50) is its own group, used alone; the other gateway's
# (non-optimized, prio 10) waits in the second group. failback immediate: a path group that
# becomes the best one is used at once. no_path_retry 30 (x polling_interval 1 s): I/O is
# queued, not failed, while no path is up, for longer than a takeover takes.
# fast_io_fail_tmo 2: multipathd sets it as the iSCSI session's replacement timeout, after
# which the I/O of a path whose connection is down fails over (open-iscsi's default is 120 s).
# hardware_handler "0": the guest's kernel (Debian's cloud kernel) has no scsi_dh_alua; the
# states are implicit, so no SET TARGET PORT GROUPS is needed to switch groups.
MULTIPATH_CONF = """\
defaults {
    user_friendly_names yes
    find_multipaths no
    polling_interval 1
    max_polling_interval 2
}
devices {
    device {
        vendor "TARGETD"
        product ".*"
        path_grouping_policy group_by_prio
        prio alua
        hardware_handler "0"
        path_checker tur
        failback immediate
        no_path_retry 30
        fast_io_fail_tmo 2
    }
}
"""

SCRIPT = r""". ./lib.sh
cat >/etc/multipath.conf <<'EOF'
@MULTIPATH_CONF@EOF
step "udevd (multipath-tools relies on it); nodes for gateway A and B"
/lib/systemd/systemd-udevd --daemon
for p in "$TARGET_PORTAL" "$PORTAL_B"; do
    run iscsiadm -m node -o new -T "$TARGET_IQN" -p "$p" >/dev/null
done
step "login through A; a first write there takes the image's lock"
iscsi_login
a=$(block_dev 0)
run dd if=/dev/zero of="$a" bs=4096 count=1 oflag=direct
step "login through B"
run iscsiadm -m node -T "$TARGET_IQN" -p "$PORTAL_B" --login
# Both disks attached (the second SCSI device comes a moment before its sdX).
wait_for 15 sh -c '[ $(ls -d /sys/class/scsi_device/*/device/block/* | wc -l) -eq 2 ]' ||
    fail "no second path"
b=""
for d in /sys/class/scsi_device/*/device/block/*; do
    [ "/dev/${d##*/}" = "$a" ] || b="/dev/${d##*/}"
done
[ -n "$b" ] || fail "no block device through B"
wait_for 15 sh -c "(: <$b) 2>/dev/null" || fail "$b did not appear (or does not open)"
echo "through A: $a, through B: $b"
run udevadm settle

# path_is DEV PRIO: in `multipath -ll`, DEV's path is up ("active ready") in the path group
# of priority PRIO (a group's own status only says whether I/O went through it lately).
path_is() {
    _line=$(multipath -ll 2>/dev/null | awk -v sd=" ${1#/dev/} " '
        /prio=/ { match($0, /prio=[0-9]+/); prio = substr($0, RSTART + 5, RLENGTH - 5) }
        index($0, sd) { n = split($0, f, " "); print prio, f[n-2], f[n-1] }')
    [ "$_line" = "$2 active ready" ] || fail "$1: expected '$2 active ready', got '$_line'"
}
step "multipathd: one map, A's path optimized (prio 50, active), B's non-optimized"
multipathd -d -s -v2 >/tmp/multipathd.log 2>&1 &
wait_for 30 sh -c "multipath -ll 2>/dev/null | grep -q ' ${b#/dev/} '" || {
    cat /tmp/multipathd.log; fail "no multipath map over both paths"; }
run multipath -ll
path_is "$a" 50
path_is "$b" 10
dm=$(ls /sys/block/${a#/dev/}/holders)
mp=/dev/$dm
echo "multipath device: $mp"

# Block I: 128 copies of a 32-byte line naming it, written once with O_DIRECT; each write
# acknowledged is logged with the guest's uptime.
block_of() {
    _s=$(printf 'mpath-block %08d ..........\n_' "$1")
    _s=${_s%_}
    for _k in 1 2 3 4 5 6 7; do _s="$_s$_s"; done
    printf '%s' "$_s"
}
writer() {
    i=0
    while [ $i -lt $BLOCKS ]; do
        block_of $i | dd of="$mp" bs=4096 seek=$i count=1 iflag=fullblock oflag=direct \
            conv=notrunc 2>/dev/null || { echo "write of block $i failed"; exit 1; }
        read -r up _ </proc/uptime
        echo "$i $up" >>/tmp/acked
        i=$((i + 1))
    done
}
step "writer: $BLOCKS blocks through $mp; gateway A killed with kill -9 after $KILL_AFTER"
: >/tmp/acked
writer &
w=$!
wait_for 120 sh -c "[ \$(wc -l </tmp/acked) -ge $KILL_AFTER ]" || fail "writer stalled"
host kill-a
read -r killed _ </proc/uptime
wait $w || fail "the writer failed"
echo "acknowledged: $(wc -l </tmp/acked) of $BLOCKS"
awk -v killed=$killed 'NR > 1 && $2 - prev > gap { gap = $2 - prev; at = $1 }
    { prev = $2 } $2 > killed && !resumed { resumed = $2 }
    END { printf "longest pause between acknowledged writes: %.2f s (before block %d)\n", gap, at
          printf "first write acknowledged after the kill: %.2f s\n", resumed - killed }' /tmp/acked
run multipath -ll
multipath -ll | grep " ${a#/dev/} " | grep -q "failed faulty" || fail "A's path is not failed"
path_is "$b" 50
step "every block reads back through $mp (one O_DIRECT read, compared with the pattern)"
i=0
while [ $i -lt $BLOCKS ]; do block_of $i; i=$((i + 1)); done >/tmp/expected
echo 3 >/proc/sys/vm/drop_caches
run dd if="$mp" of=/tmp/actual bs=4096 count=$BLOCKS iflag=direct
[ $(wc -l </tmp/acked) -eq $BLOCKS ] || fail "not every write was acknowledged"
cmp /tmp/expected /tmp/actual || fail "blocks differ: $(cmp -l /tmp/expected /tmp/actual |
    awk '{ print int(($1 - 1) / 4096) }' | uniq | head -20 | tr '\n' ' ')"
step "gateway A restarted: its path rejoins as the non-optimized one"
host start-a
wait_for 60 sh -c "[ \"\$(multipath -ll 2>/dev/null | grep ' ${a#/dev/} ')\" != '' ] &&
    multipath -ll | grep ' ${a#/dev/} ' | grep -q 'active ready'" || {
    multipath -ll; tail -20 /tmp/multipathd.log; fail "A's path was not reinstated"; }
run multipath -ll
path_is "$a" 10
path_is "$b" 50
out=$(run sg_rtpg -d "$a")
echo "$out"
echo "multipath guest: all steps passed"
"""


def expected_block(i: int) -> bytes:
    return f"mpath-block {i:08d} ..........\n".encode() * (BLOCK // 32)


def test_multipath_writer_survives_kill9_of_the_optimized_gateway(
    ceph_cluster: CephCluster,
    new_image: ImageFactory,
    gateway_pair: PairFactory,
    tmp_path: Path,
) -> None:
    """dm-multipath (multipathd, group_by_prio, prio alua) over both gateways in one guest:
    A, the lock holder, is the active path; killed with kill -9 while a writer streams
    O_DIRECT blocks through the map, the writer goes on through B with no failed write;
    every acknowledged block reads back in the guest and is in ``rbd export``; A,
    restarted, is reinstated by multipathd in the non-optimized group and RTPG through it
    reports group 1 non-optimized, group 2 optimized."""
    image = new_image("64M")
    pair = gateway_pair(image, takeover_ms=2000)
    script = SCRIPT.replace("@MULTIPATH_CONF@", MULTIPATH_CONF)

    def kill_a() -> None:
        pair.kill(pair.a)

    out = run_guest(
        script,
        pair.a,
        env={
            "PORTAL_B": f"{HOST_FROM_GUEST}:{pair.b.port}",
            "BLOCKS": str(BLOCKS),
            "KILL_AFTER": str(KILL_AFTER),
        },
        actions={"kill-a": kill_a, "start-a": pair.a.start},
        timeout=400,
    )
    assert "multipath guest: all steps passed" in out
    assert f"acknowledged: {BLOCKS} of {BLOCKS}" in out
    pause = re.search(r"first write acknowledged after the kill: ([\d.]+) s", out)
    assert pause is not None
    print(f"guest: first write after the kill {pause.group(1)} s")
    print(re.search(r"longest pause.*", out).group(0))  # type: ignore[union-attr]
    assert float(pause.group(1)) < 10.0
    # RTPG through A's path, after it rejoined: group 1 (A) non-optimized, 2 (B) optimized.
    groups = re.findall(r"target port group id : 0x(\w+) .*?access state : 0x(\w+)", out, re.S)
    assert [(int(g, 16), int(s, 16)) for g, s in groups] == [(1, 1), (2, 0)], out
    assert "(active/non optimized)" in out and "(active/optimized)" in out
    assert "breaking its lock" in pair.b.stderr
    exported = export_image(ceph_cluster, image, tmp_path / "export")
    bad = [i for i in range(BLOCKS) if exported[i * BLOCK : (i + 1) * BLOCK] != expected_block(i)]
    assert bad == [], bad
