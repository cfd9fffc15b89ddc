#!/usr/bin/env python3
"""What keeping persistent reservations in the cluster costs: PERSISTENT RESERVE OUT and IN
through each of two RBD gateways, against a file LUN (reservations in memory), and READ(10)
on the RBD LUN with and without a reservation held (docs/rbd.md, "Persistent
reservations").

One run starts a one-monitor, one-OSD Ceph cluster on loopback (tests/ceph/cluster.py,
memstore; or ``--ceph-conf C`` to use a running one with an ``rbd`` pool), two gateways on
one image (``[gateway]``) and a daemon with a file LUN. Each case times ``--count``
commands, one at a time from one session: a PROUT is REGISTER AND IGNORE EXISTING KEY with
a new key each time (a change: read, compare-and-swap write, notify the other gateway and
wait for it); a PRIN is READ KEYS (one read of the record). Printed: the median and p90 of
each case and the median against the file LUN's.

    python3 bench/pr_latency.py [--count 200] [--json F] [--ceph-conf C]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateways import CephCluster, RawInitiator, gateway_config, login
from targets import LOOPBACK, free_port, start_configured, stop_pid

IQN = "iqn.2026-11.org.targetd.bench:pr"
REGISTER_IGNORE = bytes([0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0])
RESERVE_WE = bytes([0x5F, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0])
READ_KEYS = bytes([0x5E, 0x00, 0, 0, 0, 0, 0, 1, 0, 0])
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])


def file_config(port: int) -> str:
    return f"""
[[portal]]
listen = "{LOOPBACK}:{port}"

[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
size = "64MiB"
"""


def timed(
    ini: RawInitiator, count: int, cdb: bytes, *, data: object = None, read: int = 0
) -> list[float]:
    """Seconds per command; ``data`` is the Data-Out, or a function of the command's index."""
    out = []
    for n in range(count):
        payload = data(n) if callable(data) else (data or b"")
        started = time.perf_counter()
        status = ini.command(cdb, data=payload, read=read)[0]
        out.append(time.perf_counter() - started)
        if status != 0:
            raise RuntimeError(f"{cdb.hex()} answered status {status:#x}")
    return out


def params(n: int) -> bytes:
    return bytes(8) + (n + 1).to_bytes(8, "big") + bytes(8)


def cases(port: int, label: str, count: int, reads: bool) -> dict[str, list[float]]:
    ini = login(port, "bench", IQN)
    got = {
        f"PROUT {label}": timed(ini, count, REGISTER_IGNORE, data=params),
        f"PRIN {label}": timed(ini, count, READ_KEYS, read=256),
    }
    if reads:
        got[f"READ(10) {label}, no reservation"] = timed(ini, count, READ10, read=512)
        holder = login(port, "holder", IQN)
        key = 0x7777
        holder_key = bytes(8) + key.to_bytes(8, "big") + bytes(8)
        assert holder.command(REGISTER_IGNORE, data=holder_key)[0] == 0
        assert holder.command(RESERVE_WE, data=key.to_bytes(8, "big") + bytes(16))[0] == 0
        # WRITE EXCLUSIVE by another initiator: this one may still read.
        got[f"READ(10) {label}, reserved"] = timed(ini, count, READ10, read=512)
        holder.close()
    ini.close()
    return got


def run(workdir: Path, cluster: CephCluster, count: int) -> dict[str, list[float]]:
    image = "pr-latency"
    cluster.rbd("create", "--size", "64M", f"{cluster.pool}/{image}")
    pa, pb, pf = free_port(), free_port(), free_port()
    procs = [start_configured(workdir, "file", file_config(pf), pf)]
    for name, port, tpgt, peer in (("a", pa, 1, pb), ("b", pb, 2, pa)):
        config = gateway_config(
            IQN, cluster.conf, image, port, tpgt, peer, "unit_attention = false"
        )
        procs.append(start_configured(workdir, name, config, port))
    try:
        results = cases(pf, "file LUN", count, reads=False)
        results |= cases(pa, "RBD via A", count, reads=True)
        results |= cases(pb, "RBD via B", count, reads=False)
        return results
    finally:
        for proc in procs:
            stop_pid(proc)
        cluster.rbd("rm", "--no-progress", f"{cluster.pool}/{image}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--ceph-conf", type=Path, help="use this running cluster (pool rbd) instead of starting one"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="targetd-pr-latency-") as tmp:
        workdir = Path(tmp)
        if args.ceph_conf is not None:
            results = run(workdir, CephCluster(args.ceph_conf.parent), args.count)
        else:
            with CephCluster(workdir / "ceph") as cluster:
                results = run(workdir, cluster, args.count)
    base = {
        "PROUT": statistics.median(results["PROUT file LUN"]),
        "PRIN": statistics.median(results["PRIN file LUN"]),
        "READ(10)": statistics.median(results["READ(10) RBD via A, no reservation"]),
    }
    print(f"{'case':<38}{'n':>5}{'median ms':>11}{'p90 ms':>9}{'vs base':>9}  base")
    for name, times in results.items():
        kind = name.split(" ")[0]
        median = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        base_name = "file LUN" if kind != "READ(10)" else "RBD, no reservation"
        print(f"{name:<38}{len(times):>5}{median * 1e3:>11.2f}{p90 * 1e3:>9.2f}"
              f"{median / base[kind]:>9.2f}  {base_name}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
