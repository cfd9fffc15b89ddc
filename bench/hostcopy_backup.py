"""targetd-copy against sg_raw: the same backup lists, sent from a Linux initiator in the
QEMU guest (tests/guest/), side by side in one run.

LUN 0 holds ``--size`` of random data (written into its image before the daemon starts);
LUN 1 is the tape. In the guest, ``targetd-copy backup --dry-run`` writes the parameter
lists once; then, ``--repeats`` times in alternating order:

- ``targetd-copy``: ``targetd-copy backup /dev/sgA /dev/sgT --position start`` (it rewinds,
  reads VPD 83h/8Fh and the operating parameters, builds the lists, sends each with IMMED
  and polls RECEIVE COPY STATUS(LID4) every 0.1 s);
- ``sg_raw``: REWIND, then each list file with ``sg_raw -s N -i FILE``, polling with the
  ``sg_raw`` RECEIVE COPY STATUS(LID4) line --dry-run printed, every 0.1 s, until byte 5 is
  01 (what a script around sg3_utils does).

Times are the guest's (/proc/uptime, 10 ms) around each whole backup, so the tool's Python
start-up and its device queries are in its figure; the copy itself is the target's in both.
The tool's own clock (from the first list sent to the last completed) is shown beside, and
what the rest of its time went to: its start-up alone (``targetd-copy --help``: the
interpreter and the imports), and the remainder (the device queries, the rewind, the
lists built).

    python3 bench/hostcopy_backup.py                  # 512 MiB, 3 repeats: a few minutes
    python3 bench/hostcopy_backup.py --size 128MiB --repeats 1
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# tests/ first: its conftest (the Daemon fixture class) is the one the guest harness imports.
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "guest"), str(REPO)]

# mypy resolves ``conftest`` to the repository root's; at run time tests/ comes first.
from conftest import Daemon, free_port  # type: ignore[attr-defined]  # noqa: E402
from guest_vm import guest_config, run_guest  # noqa: E402

from targetd.config import parse_size  # noqa: E402

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd:bench"

GUEST_SCRIPT = r"""
. ./lib.sh
iscsi_discover >/dev/null
iscsi_login >/dev/null
SRC=$(targetd-copy devices --lun 0 --node sg --wait 15)
TAPE=$(targetd-copy devices --lun 1 --node sg --wait 15)
for sg in "$SRC" "$TAPE"; do
    sg_turs "$sg" >/dev/null 2>&1 || sg_turs "$sg" >/dev/null 2>&1 || true
done
mkdir -p /tmp/lists
targetd-copy backup "$SRC" "$TAPE" --dry-run --list-dir /tmp/lists --record-size "$RECORD" \
    >/tmp/dry.txt
cat /tmp/dry.txt
now() { cut -d' ' -f1 /proc/uptime; }
by_sg_raw() {
    sg_raw "$TAPE" 01 00 00 00 00 00 >/dev/null 2>&1
    t0=$(now)
    grep '^sg_raw' /tmp/dry.txt >/tmp/lines
    while read -r send && read -r status; do
        $send >/dev/null 2>&1 || fail "sg_raw refused a list: $send"
        while :; do
            $status -o /tmp/st.bin >/dev/null 2>&1 || fail "RECEIVE COPY STATUS failed"
            state=$(od -An -tx1 -j5 -N1 /tmp/st.bin | tr -d ' ')
            [ "$state" = 01 ] && break
            [ "$state" = 11 ] || [ "$state" = 12 ] || fail "copy ended with status $state"
            sleep 0.1
        done
    done </tmp/lines
    t1=$(now)
    echo "@@bench sg_raw $t0 $t1"
}
by_tool() {
    t0=$(now)
    targetd-copy backup "$SRC" "$TAPE" --position start --record-size "$RECORD" 2>/tmp/tool.err \
        || { cat /tmp/tool.err; fail "targetd-copy backup failed"; }
    t1=$(now)
    copy=$(sed -n 's/.*done, .* in \([0-9.]*\)s .*/\1/p' /tmp/tool.err)
    echo "@@bench targetd-copy $t0 $t1 $copy"
}
by_startup() {
    t0=$(now)
    targetd-copy --help >/dev/null
    t1=$(now)
    echo "@@bench startup $t0 $t1"
}
r=0
while [ "$r" -lt "$REPEATS" ]; do
    if [ $((r % 2)) -eq 0 ]; then by_tool; by_sg_raw; else by_sg_raw; by_tool; fi
    by_startup
    r=$((r + 1))
done
"""


def config(size: int) -> str:
    return f"""
[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
path = "src.img"
size = "{size}"
[[target.lun]]
lun = 1
kind = "tape"
path = "tape.img"
size = "{size + 64 * MiB}"
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="512MiB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record-size", default="1MiB")
    args = ap.parse_args()
    size = parse_size(args.size, "--size")
    work = Path(tempfile.mkdtemp(prefix="hostcopy-bench-"))
    state = work / "state"
    state.mkdir()
    with (state / "src.img").open("wb") as f:
        for _ in range(size // (64 * MiB)):
            f.write(os.urandom(64 * MiB))
        f.write(os.urandom(size % (64 * MiB)))
    port = free_port()
    cfg = work / "t.toml"
    cfg.write_text(guest_config(port, config(size)))
    daemon = Daemon(port, state, cfg, IQN, work / "targetd.log").start()
    try:
        out = run_guest(
            GUEST_SCRIPT,
            daemon,
            env={"REPEATS": str(args.repeats), "RECORD": args.record_size},
            timeout=120 + args.repeats * 2 * (size / MiB) / 20,
        )
    finally:
        daemon.stop()
    print("\n".join(line for line in out.splitlines() if line.startswith("sg_raw -s")))
    walls: dict[str, list[float]] = {"targetd-copy": [], "sg_raw": [], "startup": []}
    copies: list[float] = []
    for line in out.splitlines():
        m = re.search(r"@@bench (\S+) ([\d.]+) ([\d.]+)(?: ([\d.]+))?", line)
        if m:
            walls[m[1]].append(float(m[3]) - float(m[2]))
            if m[4]:
                copies.append(float(m[4]))
    rate = {k: [size / MiB / max(t, 0.01) for t in v] for k, v in walls.items() if k != "startup"}
    med = {k: statistics.median(v) for k, v in rate.items()}
    print(f"\n{size / MiB:.0f} MiB, {args.record_size} records, {args.repeats} repeats, "
          f"alternating order, guest clock\n")  # fmt: skip
    print("| backup sent by | median MiB/s | runs MiB/s | median s | x sg_raw |")
    print("| --- | ---: | --- | ---: | ---: |")
    for name in ("targetd-copy", "sg_raw"):
        runs = ", ".join(f"{r:.0f}" for r in rate[name])
        print(
            f"| {name} | {med[name]:.0f} | {runs} | {statistics.median(walls[name]):.2f} |"
            f" {med[name] / med['sg_raw']:.2f} |"
        )
    if copies:
        own = statistics.median(size / MiB / max(c, 0.01) for c in copies)
        print(f"\ntargetd-copy's own clock (first list sent to last completed): median "
              f"{own:.0f} MiB/s")  # fmt: skip
        wall, copy = statistics.median(walls["targetd-copy"]), statistics.median(copies)
        start = statistics.median(walls["startup"]) if walls["startup"] else 0.0
        by_sg_raw = statistics.median(walls["sg_raw"])
        print(
            f"targetd-copy's median {wall:.2f} s: the copy {copy:.2f} s, its start-up alone"
            f" (--help) {start:.2f} s, the rest (queries, rewind, lists)"
            f" {wall - copy - start:.2f} s; sg_raw's median {by_sg_raw:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
