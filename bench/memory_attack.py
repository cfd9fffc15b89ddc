#!/usr/bin/env python3
"""Other sessions' 4 KiB reads, and the daemon's memory, while one client misbehaves.

Starts targetd (default configuration) and measures, on a well-behaved session, 4 KiB QD1
read latency (p50, p99, max) three ways, each beside the daemon's peak RSS:

- idle;
- while another session has announced 240 WRITE(16) of 64 MiB and sends no data;
- while another session has asked for 1,920 READ(16) of 8 MiB and never reads the answers.

The attacks are those of the memory bounds in docs/iscsi.md ("Memory"), ten times the size
first reported. The table prints the ratio of each p99 to the idle one.

    python3 bench/memory_attack.py [--reads N]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT))

from raw_initiator import RawInitiator  # noqa: E402
from targets import TargetdTarget  # noqa: E402

MiB = 1 << 20


def read16(lba: int, blocks: int) -> bytes:
    return bytes([0x88, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


def write16(lba: int, blocks: int) -> bytes:
    return bytes([0x8A, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


def session(port: int, iqn: str, name: str) -> RawInitiator:
    ini = RawInitiator(port, name=f"iqn.2026-11.org.targetd.bench:{name}")
    if ini.login(iqn).bhs[36] != 0:
        raise RuntimeError("login refused")
    ini.clear_unit_attentions()
    return ini


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def latencies(ini: RawInitiator, count: int) -> list[float]:
    times = []
    for i in range(count):
        start = time.perf_counter()
        status, data, _ = ini.command(read16(i * 8 % 65536, 8), read=4096)
        times.append((time.perf_counter() - start) * 1e6)
        if status != 0 or len(data) != 4096:
            raise RuntimeError(f"read failed: status {status:#x}")
    return times


def measure(pid: int, ini: RawInitiator, count: int) -> tuple[list[float], int]:
    """Latencies of ``count`` reads, and the peak RSS seen meanwhile."""
    peak = [rss(pid)]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss(pid))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        times = latencies(ini, count)
    finally:
        done.set()
        watcher.join()
    return times, peak[0]


def write_attack(attacker: RawInitiator) -> None:
    size = 64 * MiB
    burst = b"".join(
        bytes(attacker.scsi_header(write16(0, size // 512), write=size)) for _ in range(240)
    )
    attacker.sock.sendall(burst)


def read_attack(attacker: RawInitiator) -> None:
    attacker.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    size = 8 * MiB
    burst = b"".join(
        bytes(attacker.scsi_header(read16(0, size // 512), read=size)) for _ in range(1920)
    )
    attacker.sock.settimeout(30)
    attacker.sock.sendall(burst)


def row(label: str, times: list[float], peak: int, idle_p99: float) -> str:
    ordered = sorted(times)
    p99 = ordered[max(int(len(ordered) * 0.99) - 1, 0)]
    return (
        f"{label:<34} | {statistics.median(ordered):8.0f} | {p99:8.0f} | {ordered[-1]:8.0f} | "
        f"{p99 / idle_p99:5.2f}x | {peak / MiB:6.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=2000, help="4 KiB reads per measurement")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="targetd-attack-"))
    target = TargetdTarget.start(workdir, REPO_ROOT)
    try:
        pid = target.proc.pid
        port, iqn = target.port, target.iqn
        good = session(port, iqn, "good")
        latencies(good, 200)  # warm the page cache and the interpreter
        runs: list[tuple[str, Callable[[RawInitiator], None] | None]] = [
            ("idle", None),
            ("240 x 64 MiB writes, no data", write_attack),
            ("1,920 x 8 MiB reads, never read", read_attack),
        ]
        lines = []
        idle_p99 = 0.0
        for label, attack in runs:
            attacker = session(port, iqn, "attacker") if attack else None
            if attack is not None and attacker is not None:
                attack(attacker)
                time.sleep(0.5)
            times, peak = measure(pid, good, args.reads)
            if attack is None:
                idle_p99 = sorted(times)[max(int(len(times) * 0.99) - 1, 0)]
            lines.append(row(label, times, peak, idle_p99))
            if attacker is not None:
                attacker.close()
                time.sleep(1.0)  # the daemon gives the attacker's buffers back
        print("4 KiB QD1 reads of another session (us), daemon peak RSS (MiB)")
        print(f"{'during':<34} | {'p50':>8} | {'p99':>8} | {'max':>8} | p99/idle | {'RSS':>6}")
        print("+".join("-" * n for n in (35, 10, 10, 10, 10, 7)))
        for line in lines:
            print(line)
        good.close()
    finally:
        target.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
