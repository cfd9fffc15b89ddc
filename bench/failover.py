#!/usr/bin/env python3
"""Failover of two RBD gateways: time from kill -9 of the lock holder to the first write
completed through the other gateway (docs/rbd.md, "Two gateways on one image").

One run starts a one-monitor, one-OSD Ceph cluster on loopback (tests/ceph/cluster.py,
memstore), then for each repeat: makes a fresh image, starts gateway A and gateway B on it
(``[gateway]``, default ``takeover_ms``), writes through A until A holds the image's lock,
kills A with SIGKILL and at once writes through B, retrying what an initiator retries
(NOT READY 04h/0Ah transitioning, UNIT ATTENTION), until a write completes. Printed: each
run, the median, and the median against the goal (10 s) and ceph-iscsi's default (about
25 s).

    python3 bench/failover.py [--repeat 5] [--takeover-ms 3000] [--json F] [--ceph-conf C]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from gateways import CephCluster, RawInitiator, gateway_config, login
from targets import free_port, start_configured, stop_pid

from scsi.sense import parse_sense

IQN = "iqn.2026-11.org.targetd.bench:failover"
GOAL = 10.0  # seconds, issue 13
CEPH_ISCSI = 25.0  # seconds: ceph-iscsi's default failover
BLOCK = 512
RETRIED = {(6, 0x29, 0x00), (6, 0x2A, 0x06), (2, 0x04, 0x0A)}


def write10(lba: int) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 1, 0])


def write_until_good(ini: RawInitiator, lba: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, _, sense = ini.command(write10(lba), data=bytes([lba & 255]) * BLOCK)
        if status == 0:
            return
        reason = parse_sense(sense) if sense else None
        if reason not in RETRIED or time.monotonic() > deadline:
            raise RuntimeError(f"write through the survivor failed: {status} {reason}")
        time.sleep(0.01)


def one_run(workdir: Path, cluster: CephCluster, takeover: int) -> float:
    image = f"failover-{uuid.uuid4().hex[:8]}"
    cluster.rbd("create", "--size", "64M", f"{cluster.pool}/{image}")
    port_a, port_b = free_port(), free_port()
    settings = f"takeover_ms = {takeover}"
    a = start_configured(workdir, f"a-{image}", gateway_config(
        IQN, cluster.conf, image, port_a, 1, port_b, settings), port_a)  # fmt: skip
    b = start_configured(workdir, f"b-{image}", gateway_config(
        IQN, cluster.conf, image, port_b, 2, port_a, settings), port_b)  # fmt: skip
    try:
        ini_a, ini_b = login(port_a, "a", IQN), login(port_b, "b", IQN)
        for lba in range(16):
            write_until_good(ini_a, lba)  # A holds the lock
        os.kill(a.pid, signal.SIGKILL)
        killed = time.monotonic()
        write_until_good(ini_b, 100)
        elapsed = time.monotonic() - killed
        a.wait()
        ini_b.close()
        return elapsed
    finally:
        for proc in (a, b):
            stop_pid(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--takeover-ms", type=int, default=3000)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--ceph-conf", type=Path, help="use this running cluster (pool rbd) instead of starting one"
    )
    args = parser.parse_args(argv)
    times: list[float] = []

    def runs(workdir: Path, cluster: CephCluster) -> None:
        for n in range(args.repeat):
            seconds = one_run(workdir, cluster, args.takeover_ms)
            times.append(seconds)
            print(f"run {n + 1}: {seconds:.2f} s", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="targetd-failover-") as tmp:
        workdir = Path(tmp)
        if args.ceph_conf is not None:
            runs(workdir, CephCluster(args.ceph_conf.parent))  # not started, not stopped
        else:
            with CephCluster(workdir / "ceph") as cluster:
                runs(workdir, cluster)
    median = statistics.median(times)
    print(f"{'case':<28}{'runs':>6}{'median s':>10}{'min s':>8}{'max s':>8}"
          f"{'goal s':>8}{'vs goal':>9}{'vs ceph-iscsi':>15}")  # fmt: skip
    print(f"{'kill -9 -> write on peer':<28}{len(times):>6}{median:>10.2f}{min(times):>8.2f}"
          f"{max(times):>8.2f}{GOAL:>8.1f}{median / GOAL:>9.2f}"
          f"{median / CEPH_ISCSI:>15.2f}")  # fmt: skip
    print(f"runs: {', '.join(f'{t:.2f}' for t in times)} (takeover_ms = {args.takeover_ms})")
    if args.json:
        report = {"takeover_ms": args.takeover_ms, "seconds": times, "median": median}
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if median <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
