"""One client cannot grow the daemon's memory without bound (docs/iscsi.md, "Memory").

Each test measures the daemon's resident set from /proc while a raw client misbehaves:
announces huge writes and sends no data, or asks for many large reads and never reads the
answers. The bound checked is the documented one: what the daemon used before, plus one
session's buffers (``buffers_per_session``), plus the free buffers the pool may keep
(``buffer_pool``), plus the receive buffers of the connections. Other sessions keep being
served meanwhile; their 4 KiB read latency is printed (run with -s), not asserted.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable

import pytest
from conftest import DEFAULT_IQN, Daemon, DaemonFactory
from pair_scsi import read16, write16
from raw_initiator import RawInitiator

from targetd.iscsi.pdu import Op

MiB = 1 << 20
SESSION = 64 * MiB  # buffers_per_session default
POOL = 64 * MiB  # buffer_pool default
SLACK = 48 * MiB  # interpreter arenas, sockets, staging buffers of a few connections

CONFIG = f"""
[[target]]
name = "{DEFAULT_IQN}"
[[target.lun]]
lun = 0
size = "64MiB"
[limits]
max_sessions = 144
"""


def rss(d: Daemon) -> int:
    assert d.proc is not None
    with open(f"/proc/{d.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settle(d: Daemon, seconds: float = 1.5) -> int:
    """The highest RSS seen over ``seconds`` (the daemon works through its backlog)."""
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, rss(d))
        time.sleep(0.05)
    return peak


def session(d: Daemon, name: str) -> RawInitiator:
    ini = RawInitiator(d.port, name=f"iqn.2026-11.org.targetd.test:{name}")
    assert ini.login(d.iqn).bhs[36] == 0
    ini.clear_unit_attentions()
    return ini


def small_reads(ini: RawInitiator, count: int = 200) -> list[float]:
    """4 KiB reads one at a time; their latencies in ms. Each must succeed."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        status, data, sense = ini.command(read16(i * 8 % 1024, 8), read=4096)
        times.append((time.perf_counter() - start) * 1000)
        assert status == 0 and len(data) == 4096, sense.hex()
    return times


def report(label: str, times: list[float]) -> None:
    times = sorted(times)
    p99 = times[int(len(times) * 0.99) - 1]
    print(f"{label}: 4 KiB read p50 {statistics.median(times):.2f} ms, p99 {p99:.2f} ms")


@pytest.fixture
def daemon(targetd_factory: DaemonFactory) -> Daemon:
    return targetd_factory(CONFIG)


def attacked(daemon: Daemon, label: str, burst: Callable[[RawInitiator], bytes]) -> None:
    """A good session's 4 KiB reads before and while an attacker's ``burst`` of commands is
    in the daemon: the reads all succeed, and the daemon grows by at most one session's
    buffers and the shared pool."""
    good = session(daemon, "good")
    report("before", small_reads(good))
    before = settle(daemon, 0.3)
    attacker = session(daemon, "attacker")
    attacker.sock.sendall(burst(attacker))
    during = small_reads(good)
    peak = settle(daemon)
    report(f"during {label}", during)
    print(f"RSS {before / MiB:.0f} MiB before, {peak / MiB:.0f} MiB during")
    assert peak < before + SESSION + POOL + SLACK
    attacker.close()
    good.close()


def test_writes_announced_and_never_sent_hold_one_sessions_buffers(daemon: Daemon) -> None:
    def burst(attacker: RawInitiator) -> bytes:
        # 240 WRITE(16) of 64 MiB each (10x the reported attack), not one byte of data.
        return b"".join(
            bytes(attacker.scsi_header(write16(0, 64 * MiB // 512), write=64 * MiB))
            for _ in range(240)
        )

    attacked(daemon, "240 x 64 MiB writes without data", burst)


def test_reads_never_read_hold_one_sessions_buffers(daemon: Daemon) -> None:
    def burst(attacker: RawInitiator) -> bytes:
        attacker.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        # 1920 READ(16) of 8 MiB each (10x the reported attack) in one burst; never read.
        return b"".join(
            bytes(attacker.scsi_header(read16(0, 8 * MiB // 512), read=8 * MiB))
            for _ in range(1920)
        )

    attacked(daemon, "1920 x 8 MiB reads never read", burst)


def test_144_idle_connections_after_1mib_reads_keep_little(daemon: Daemon) -> None:
    before = settle(daemon, 0.3)
    clients = [session(daemon, f"idle{i}") for i in range(144)]
    try:
        for ini in clients:
            # Eight 1 MiB reads in flight at once, all answers read.
            ini.sock.sendall(
                b"".join(bytes(ini.scsi_header(read16(i * 2048, 2048), read=MiB)) for i in range(8))
            )
        for ini in clients:
            done = 0
            while done < 8:
                resp = ini.recv()
                if resp.opcode == Op.DATA_IN and resp.bhs[1] & 0x01:
                    assert resp.bhs[3] == 0
                    done += 1
        idle = settle(daemon, 0.5)
        print(f"RSS {before / MiB:.0f} MiB before, {idle / MiB:.0f} MiB with 144 idle")
        # Free buffers are kept for the daemon, not per connection; each connection keeps
        # its 256 KiB receive buffer.
        assert idle < before + POOL + 144 * 256 * 1024 + SLACK
    finally:
        for ini in clients:
            ini.close()
