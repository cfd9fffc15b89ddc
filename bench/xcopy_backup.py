"""EXTENDED COPY backup benchmark against a real daemon, side by side in one run.

The same bytes (``--size``, default 1 GiB of random data, written straight into LUN 0's
image before the daemon starts, page cache warm) are copied, ``--repeats`` times in a
rotating order so that no method always runs first or last on a noisy machine:

- ``cp``: the image file copied on the host (copy_file_range: the ceiling);
- ``host``: block to block host-mediated over iSCSI, ``qemu-img convert -n`` (reads and
  writes cross the network twice);
- ``tape`` / ``sink``: one EXTENDED COPY block to the tape LU (8 MiB variable records,
  then a file mark) / to a file sink LU;
- ``offload``: block to block, ``qemu-img convert -n -C`` (an EXTENDED COPY per chunk);
- ``tape-sha256`` / ``sink-sha256``: the tape and sink backups as self-describing backups
  (START DIGEST first, WRITE LABEL before the file mark: the target hashes every byte it
  writes and puts the SHA-256 in the end label), beside the same backup without.

``--methods`` picks some (``cp`` is always run: the ratios are to it).

Each copy starts after ``sync``, so none pays for the previous one's write-back; none waits
for its own (cp does not either). The table gives medians and the ratios the issue asks
for (offloaded / cp, offloaded / host-mediated).

Then, unless ``--no-latency``:

- time from EXTENDED COPY to the first record on tape with the whole volume as backlog
  (a pair LUN 0 -> LUN 1 created and split at once, copying paced so the backlog stays)
  under policies 1 (reflect-first), 3 (merge) and 4 (split-and-backup: the SPLIT PAIR
  segment splits the DUPLEX-PENDING pair): the copy is sent with IMMED and RECEIVE COPY
  STATUS(LID4) is polled until its transfer count is not zero (a whole 1 MiB record on
  the tape, a stricter mark than its first byte);
- host 4 KiB random writes (queue depth 1, to a LUN of their own) idle and while a backup
  of LUN 0 to tape runs: p50, p99 and the ratio.

    python3 bench/xcopy_backup.py                   # 1 GiB, 3 repeats: a few minutes
    python3 bench/xcopy_backup.py --size 256MiB --repeats 1
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from raw_initiator import RawInitiator  # noqa: E402

from scsi.logical_unit import Identity  # noqa: E402
from targetd.config import parse_size  # noqa: E402

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd:bench"
RECORD = 8 * MiB
FIRST_RECORD = 1 * MiB  # records of the time-to-first-byte backups
SOURCE, TARGET, TAPE, SINK, SCRATCH = 0, 1, 2, 3, 4
METHODS = ("cp", "host", "tape", "sink", "offload", "tape-sha256", "sink-sha256")
LABELS = {
    "tape-sha256": "EXTENDED COPY block to tape, SHA-256 end label",
    "sink-sha256": "EXTENDED COPY block to file sink, SHA-256 end label",
    "cp": "cp on the host (the ceiling)",
    "host": "qemu-img convert -n (host-mediated)",
    "tape": "EXTENDED COPY block to tape",
    "sink": "EXTENDED COPY block to file sink",
    "offload": "qemu-img convert -n -C (EXTENDED COPY)",
}
POLICIES = {1: "reflect-first", 3: "merge", 4: "split-and-backup"}


def config(size: int, backlog_rate: str, priority: str = "background") -> str:
    return f"""
[pairs]
copy_rate = "{backlog_rate}"
backup_priority = "{priority}"

[[target]]
name = "{IQN}"
[[target.lun]]
lun = {SOURCE}
path = "a.img"
size = {size}
[[target.lun]]
lun = {TARGET}
path = "b.img"
size = {size}
[[target.lun]]
lun = {TAPE}
kind = "tape"
path = "tape.img"
size = {2 * size + 64 * MiB}
[[target.lun]]
lun = {SINK}
kind = "filesink"
path = "sink"
capacity = {2 * size}
[[target.lun]]
lun = {SCRATCH}
path = "scratch.img"
size = "256MiB"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- parameter lists and CDBs ---------------------------------------------------------------
def cscd(lun: int, device_type: int, block_length: int) -> bytes:
    naa = Identity(f"{IQN}/lun{lun}").naa
    head = bytes([0xE4, device_type, 0, 0, 0x01, 0x03, 0, len(naa)])
    return head + naa.ljust(20, b"\0") + bytes([0]) + block_length.to_bytes(3, "big")


def backup_list(
    size: int,
    source: int,
    destination: int,
    *,
    list_id: int,
    record: int = RECORD,
    immed: bool = False,
    split_first: bool = False,
    digest: bool = False,
) -> bytes:
    """LID4: ``size`` bytes of ``source`` to a stream LU in ``record``-byte records and a
    file mark; with ``split_first`` a SPLIT PAIR segment (the pair's own policy) first;
    with ``digest`` START DIGEST before the data and WRITE LABEL after it."""
    segments = b""
    inline = b""
    if split_first:
        segments += struct.pack(">BBH2xHB3x", 0xC0, 0, 0x08, 0, 0)
    if digest:
        segments += struct.pack(">BBH2xH4x", 0xC1, 0, 0x08, 1)
    pos = 0
    while pos < size:  # small records for the first 64 MiB, 8 MiB ones after (256 segments)
        n = min(record if pos < 64 * MiB else RECORD, size - pos)
        segments += struct.pack(
            ">BBHHHx3s2xHQ", 0, 0, 0x14, 0, 1, n.to_bytes(3, "big"), n // 512, pos // 512
        )
        pos += n
    if digest:
        inline = b"bench"
        segments += struct.pack(">BBH2xHII", 0xC2, 0, 0x0C, 1, 0, len(inline))
    segments += struct.pack(">BBH2xHx3s", 0x10, 0, 0x08, 1, (1).to_bytes(3, "big"))
    cscds = cscd(source, 0, 512) + cscd(destination, 1, 0)
    head = bytearray(48)
    head[0] = 0x01  # LID4: 4-byte lengths, IMMED
    head[15] = 0x01 if immed else 0
    head[20:24] = list_id.to_bytes(4, "big")
    head[42:44] = len(cscds).to_bytes(2, "big")
    head[44:46] = len(segments).to_bytes(2, "big")
    head[46:48] = len(inline).to_bytes(2, "big")
    return bytes(head) + cscds + segments + inline


def xcopy_cdb(params: bytes) -> bytes:
    return bytes([0x83, 0x01]) + bytes(8) + len(params).to_bytes(4, "big") + bytes(2)


def pair_out(action: int, lun: int = 0, other: int = 0, policy: int = 0) -> bytes:
    cdb = bytearray(16)
    cdb[0], cdb[1] = 0xC4, action
    cdb[2:4], cdb[4:6] = lun.to_bytes(2, "big"), other.to_bytes(2, "big")
    cdb[6] = policy
    return bytes(cdb)


REWIND = bytes([0x01, 0, 0, 0, 0, 0])


def ok(ini: RawInitiator, cdb: bytes, lun: int, data: bytes = b"", read: int = 0) -> bytes:
    status, data_in, sense = ini.command(cdb, lun=lun, data=data, read=read)
    assert status == 0, f"{cdb[:2].hex()} on LUN {lun}: status {status:#x} sense {sense.hex()}"
    return data_in


def session(port: int, name: str) -> RawInitiator:
    ini = RawInitiator(port, name=f"iqn.2026-11.org.targetd.bench:{name}")
    ini.login(IQN)
    for lun in (SOURCE, TARGET, TAPE, SINK, SCRATCH):
        ini.clear_unit_attentions(lun)
    return ini


# -- throughput ---------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    os.sync()  # each run starts without the previous one's dirty pages being written back
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


DAEMON_CPU: dict[str, list[float]] = {}  # method: the daemon's CPU seconds per run


def throughput(
    port: int,
    size: int,
    image: Path,
    work: Path,
    repeats: int,
    methods: tuple[str, ...],
    daemon_pid: int = 0,
) -> dict[str, list[float]]:
    url = f"iscsi://127.0.0.1:{port}/{IQN}"
    qemu = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw"]
    ini = session(port, "throughput")
    # One EXTENDED COPY is the whole backup: on a busy machine it can outlast the 10 s the
    # initiator waits for an answer by default.
    ini.sock.settimeout(600)
    list_id = [100]

    def backup(destination: int, digest: bool = False) -> None:
        ok(ini, REWIND, destination)
        list_id[0] += 1
        params = backup_list(size, SOURCE, destination, list_id=list_id[0], digest=digest)
        ok(ini, xcopy_cdb(params), SOURCE, params)

    runs: dict[str, Callable[[], object]] = {
        "cp": lambda: shutil.copyfile(image, work / "cp.img"),
        "host": lambda: subprocess.run([*qemu, f"{url}/{SOURCE}", f"{url}/{TARGET}"], check=True),
        "tape": lambda: backup(TAPE),
        "sink": lambda: backup(SINK),
        "tape-sha256": lambda: backup(TAPE, True),
        "sink-sha256": lambda: backup(SINK, True),
        "offload": lambda: subprocess.run(
            [*qemu, "-C", f"{url}/{SOURCE}", f"{url}/{TARGET}"], check=True
        ),
    }
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(repeats):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for method in order:
            before = cpu_seconds(daemon_pid) if daemon_pid else 0.0
            seconds[method].append(timed(runs[method]))
            if daemon_pid:
                DAEMON_CPU.setdefault(method, []).append(cpu_seconds(daemon_pid) - before)
            (work / "cp.img").unlink(missing_ok=True)
        line = "  ".join(f"{m} {size / seconds[m][-1] / MiB:.0f}" for m in methods)
        print(f"repeat {r + 1}: MiB/s {line}", flush=True)
    ini.close()
    return seconds


def throughput_table(size: int, seconds: dict[str, list[float]]) -> str:
    rate = {m: size / statistics.median(s) / MiB for m, s in seconds.items()}
    host = rate.get("host")
    lines = [
        "| copy of the same bytes | median MiB/s | runs (MiB/s) | x cp | x host-mediated |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for m in seconds:
        runs = ", ".join(f"{size / s / MiB:.0f}" for s in seconds[m])
        versus_host = f"{rate[m] / host:.2f}" if host else "-"
        lines.append(
            f"| {LABELS[m]} | {rate[m]:.0f} | {runs} | {rate[m] / rate['cp']:.2f} | {versus_host} |"
        )
    if DAEMON_CPU:
        lines.append("\n| copy | daemon CPU s per backup (median) | runs |")
        lines.append("| --- | ---: | --- |")
        for m, cpu in DAEMON_CPU.items():
            runs = ", ".join(f"{c:.2f}" for c in cpu)
            lines.append(f"| {LABELS[m]} | {statistics.median(cpu):.2f} | {runs} |")
    for m in ("tape", "sink"):  # the digest's price, from this run's medians
        if m in rate and f"{m}-sha256" in rate:
            lines.append(f"\n{m} with / without the SHA-256 end label: "
                         f"{rate[f'{m}-sha256'] / rate[m]:.2f}x the speed")  # fmt: skip
            if m in DAEMON_CPU and f"{m}-sha256" in DAEMON_CPU:
                extra = statistics.median(DAEMON_CPU[f"{m}-sha256"]) - statistics.median(
                    DAEMON_CPU[m]
                )
                lines.append(f"  daemon CPU per backup: {extra:+.2f} s "
                             f"({extra / (size / MiB) * 1e3:+.2f} ms per MiB)")  # fmt: skip
    return "\n".join(lines)


# -- time to the first record on tape --------------------------------------------------------
def transfer_count(ini: RawInitiator, list_id: int) -> tuple[int, int]:
    """(copy status, bytes transferred) from RECEIVE COPY STATUS(LID4)."""
    cdb = bytes([0x84, 0x05]) + list_id.to_bytes(4, "big") + bytes(4) + (96).to_bytes(4, "big")
    data = ok(ini, cdb + bytes(2), TAPE, read=96)
    return data[5], int.from_bytes(data[16:24], "big")


def dirty_bytes(ini: RawInitiator) -> int:
    cdb = bytes([0xC5, 0, 0xFF, 0xFF]) + bytes(6) + (96).to_bytes(4, "big") + bytes(2)
    data = ok(ini, cdb, SOURCE, read=96)
    return int.from_bytes(data[24:32], "big") * int.from_bytes(data[12:16], "big")


def first_record(port: int, size: int, policy: int, list_id: int) -> tuple[float, float, int]:
    """(seconds to the IMMED answer, seconds to the first record on tape, backlog bytes)."""
    ini = session(port, f"ttfb{policy}")
    ok(ini, REWIND, TAPE)
    ok(ini, pair_out(0x01, SOURCE, TARGET, policy), SOURCE)  # CREATE, with the policy
    if policy != 4:
        ok(ini, pair_out(0x02, SOURCE), SOURCE)  # SPLIT at once: the whole volume is backlog
    backlog = dirty_bytes(ini)
    params = backup_list(
        size, TARGET, TAPE, list_id=list_id, record=FIRST_RECORD, immed=True,
        split_first=policy == 4,
    )  # fmt: skip
    start = time.perf_counter()
    ok(ini, xcopy_cdb(params), TARGET, params)
    answered = time.perf_counter() - start
    while True:
        state, count = transfer_count(ini, list_id)
        if count or state != 0x12:
            break
    first = time.perf_counter() - start
    assert count, f"copy ended with status {state:#x} before a record reached the tape"
    abort = bytes([0x83, 0x1C]) + list_id.to_bytes(4, "big") + bytes(10)
    ini.command(abort, lun=TARGET)  # done with it; it may have ended already
    ok(ini, pair_out(0x04, SOURCE), SOURCE)  # DELETE
    ini.close()
    return answered, first, backlog


# -- host write latency ------------------------------------------------------------------------
def write_latencies(ini: RawInitiator, stop: Callable[[], bool], minimum: int) -> list[float]:
    rng = random.Random(7)
    data = rng.randbytes(4096)
    out: list[float] = []
    while len(out) < minimum or not stop():
        lba = rng.randrange(256 * MiB // 4096) * 8
        cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, 8, 0)
        start = time.perf_counter()
        ok(ini, cdb, SCRATCH, data)
        out.append(time.perf_counter() - start)
    return out


def host_write_table(port: int, size: int, repeats: int) -> str:
    """Idle and during-a-backup samples, alternating, ``repeats`` times; medians."""
    writer = session(port, "writer")
    backup_ini = session(port, "backup")
    write_latencies(writer, lambda: True, 500)  # warm up: the scratch file's blocks exist
    labels = ("idle", "during a backup of LUN 0 to tape")
    samples: dict[str, list[tuple[int, float, float]]] = {label: [] for label in labels}
    rates: list[float] = []  # MiB/s of the backups while the host writes
    for r in range(repeats):
        for label in labels:
            if label == labels[1]:
                done = threading.Event()
                ok(backup_ini, REWIND, TAPE)
                params = backup_list(size, SOURCE, TAPE, list_id=900 + r)

                def run(params: bytes = params, finished: threading.Event = done) -> None:
                    try:
                        ok(backup_ini, xcopy_cdb(params), SOURCE, params)
                    finally:  # the writer stops even if the backup failed
                        finished.set()

                thread = threading.Thread(target=run)
                began = time.perf_counter()
                thread.start()
                lat = write_latencies(writer, done.is_set, 200)
                thread.join()
                rates.append(size / (time.perf_counter() - began) / MiB)
            else:
                lat = write_latencies(writer, lambda: True, 3000)
            lat.sort()
            samples[label].append((len(lat), lat[len(lat) // 2], lat[int(len(lat) * 0.99)]))
        idle, during = samples[labels[0]][-1][2], samples[labels[1]][-1][2]
        print(f"repeat {r + 1}: p99 idle {idle * 1e3:.3f} ms, during {during * 1e3:.3f} ms,"
              f" {during / idle:.2f}x; backup {rates[-1]:.0f} MiB/s", flush=True)  # fmt: skip
    writer.close()
    backup_ini.close()
    idle_p99 = statistics.median(s[2] for s in samples[labels[0]])
    lines = [
        "| 4 KiB random writes, QD1 | n (median) | p50 | p99 | p99 runs | p99 / idle p99 |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for label in labels:
        rows = samples[label]
        n = statistics.median(s[0] for s in rows)
        p50 = statistics.median(s[1] for s in rows)
        p99 = statistics.median(s[2] for s in rows)
        runs = ", ".join(f"{s[2] * 1e3:.2f}" for s in rows)
        lines.append(
            f"| {label} | {n:.0f} | {p50 * 1e3:.3f} ms | {p99 * 1e3:.3f} ms | {runs} |"
            f" {p99 / idle_p99:.2f} |"
        )
    lines.append("")
    runs = ", ".join(f"{r:.0f}" for r in rates)
    lines.append(
        f"Backup under the host writes: median {statistics.median(rates):.0f} MiB/s ({runs})."
    )
    return "\n".join(lines)


# -- the run --------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-latency", action="store_true", help="throughput only")
    ap.add_argument("--no-throughput", action="store_true", help="latencies only")
    ap.add_argument(
        "--no-first-record", action="store_true", help="skip the time-to-first-record table"
    )
    ap.add_argument(
        "--backlog-rate", default="64MiB", help="pair copy rate while measuring first records"
    )
    ap.add_argument(
        "--backup-priority",
        default="background",
        choices=("background", "normal"),
        help="the daemon's [pairs] backup_priority",
    )
    ap.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"throughput methods, comma-separated (of {', '.join(METHODS)})",
    )
    args = ap.parse_args()
    size = parse_size(args.size, "--size")
    work = Path(tempfile.mkdtemp(prefix="xcopy-bench-"))
    state = work / "state"
    state.mkdir()
    image = state / "a.img"
    with image.open("wb") as f:
        for _ in range(size // (64 * MiB)):
            f.write(os.urandom(64 * MiB))
    (work / "t.toml").write_text(config(size, args.backlog_rate, args.backup_priority))
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "targetd", "serve", "--listen", f"127.0.0.1:{port}",
         "--state-dir", str(state), "--config", str(work / "t.toml"), "--log-level", "WARNING"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    print(f"daemon pid {daemon.pid}, {size / MiB:.0f} MiB, {args.repeats} repeats", flush=True)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        if not args.no_throughput:
            methods = ("cp", *[m for m in args.methods.split(",") if m in METHODS and m != "cp"])
            seconds = throughput(port, size, image, work, args.repeats, methods, daemon.pid)
            sink_file = state / "sink" / "file-0000.bin"
            if sink_file.exists():
                same = sink_file.read_bytes()[:size] == image.read_bytes()
                print(f"\nfile sink equals LUN 0: {same}\n")
            print(throughput_table(size, seconds))
        if not args.no_latency and not args.no_first_record:
            print("\n| policy | backlog at the copy | IMMED answer | first record on tape |")
            print("| --- | ---: | ---: | ---: |")
            for n, policy in enumerate((1, 3, 4)):
                samples = [first_record(port, size, policy, 500 + 10 * n + r) for r in range(3)]
                answered = statistics.median(s[0] for s in samples)
                first = statistics.median(s[1] for s in samples)
                backlog = min(s[2] for s in samples)
                print(
                    f"| {policy} {POLICIES[policy]} | {backlog / MiB:.0f} MiB |"
                    f" {answered * 1e3:.1f} ms | {first * 1e3:.1f} ms |",
                    flush=True,
                )
        if not args.no_latency:
            print()
            print(host_write_table(port, size, args.repeats))
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
