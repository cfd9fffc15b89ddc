"""Backup to a tape in an S3 bucket against a tape in a local image, side by side in one run.

One daemon serves a block LUN (``--size`` of random data, written into its image before
the daemon starts), a library whose cartridges are image files (a drive at LUN 2) and a
library whose cartridges live in a real S3 bucket (SeaweedFS ``weed mini``, started here
on free loopback ports; a drive at LUN 4). Each library's first cartridge is moved into
its drive. Then, ``--repeats`` times in alternating order:

- **backup**: REWIND, one EXTENDED COPY(LID4) of the whole LUN to the drive in 8 MiB
  records and a file mark (for the S3 tape the file mark is the sync point: the copy
  ends once the multipart upload is completed and indexed);
- **restore**: REWIND, one EXTENDED COPY(LID4) of the backup back to the LUN (the reads
  of the S3 tape are ranged GETs with the next window read ahead);
- **host writes**: REWIND, WRITE(6) of 256 KiB records from the initiator for the whole
  size, then WRITE FILEMARKS (what Bacula or tar through st send);
- **first record**: MOVE MEDIUM of a blank cartridge into the drive, and time to the
  first 256 KiB WRITE(6)'s GOOD after the move was sent (a load: the S3 tape's opening
  reads its description and lists the bucket), then to the WRITE FILEMARKS that makes it
  durable; the cartridge goes back to its slot after.

- **raw S3**: the same number of bytes uploaded by boto3 from this process as one
  multipart upload of 8 MiB parts, one at a time, to the same server: the ceiling the
  S3 server sets on this machine (the tape's uploads can go no faster).

The table gives medians, the runs, and S3 / local ratios; the S3 rows also against the
raw S3 upload.

    python3 bench/tape_s3_backup.py                    # 512 MiB, 3 repeats
    python3 bench/tape_s3_backup.py --size 128MiB --repeats 1
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from raw_initiator import RawInitiator  # noqa: E402
from s3_server import ENV, S3Server  # noqa: E402
from xcopy_backup import IQN, RECORD, REWIND, backup_list, cscd, ok, xcopy_cdb  # noqa: E402

from targetd.config import parse_size  # noqa: E402

MiB = 1 << 20
CHUNK = 256 << 10
SOURCE = 0
STORES = {"local": (1, 2), "s3": (3, 4)}  # store: (changer LUN, drive LUN)
DRIVE0, SLOT0 = 0x0100, 0x0400


def config(size: int, endpoint: str) -> str:
    capacity = 4 * size + 256 * MiB
    return f"""
[[target]]
name = "{IQN}"
[[target.lun]]
lun = {SOURCE}
path = "a.img"
size = {size}
[[target.lun]]
lun = 1
kind = "changer"
path = "local-vtl"
slots = 4
capacity = {capacity}
tapes = ["L00001L6", "L00002L6", "L00003L6", "L00004L6"]
[[target.lun]]
lun = 2
kind = "tape"
changer = 1
[[target.lun]]
lun = 3
kind = "changer"
path = "s3-vtl"
slots = 4
capacity = {capacity}
tapes = ["S00001L6", "S00002L6", "S00003L6", "S00004L6"]
store = "s3://tapes/bench/"
s3_endpoint = "{endpoint}"
[[target.lun]]
lun = 4
kind = "tape"
changer = 3
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def move(ini: RawInitiator, changer: int, src: int, dst: int) -> None:
    addresses = b"".join(a.to_bytes(2, "big") for a in (1, src, dst))
    ok(ini, bytes([0xA5, 0]) + addresses + bytes(4), changer)


def write6(ini: RawInitiator, lun: int, data: bytes) -> None:
    ok(ini, bytes([0x0A, 0]) + len(data).to_bytes(3, "big") + b"\0", lun, data)


def filemark(ini: RawInitiator, lun: int) -> None:
    ok(ini, bytes([0x10, 0, 0, 0, 1, 0]), lun)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512MiB")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    size = parse_size(args.size, "--size")
    work = Path(tempfile.mkdtemp(prefix="tape-s3-bench-"))
    state = work / "state"
    state.mkdir()
    with (state / "a.img").open("wb") as f:
        for _ in range(max(1, size // (64 * MiB))):
            f.write(os.urandom(min(size, 64 * MiB)))
    (work / "s3").mkdir()
    server = S3Server(work / "s3").start()
    (work / "t.toml").write_text(config(size, server.endpoint))
    port = free_port()
    env = {**os.environ, **ENV, "AWS_EC2_METADATA_DISABLED": "true"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "targetd", "serve", "--listen", f"127.0.0.1:{port}",
         "--state-dir", str(state), "--config", str(work / "t.toml"), "--log-level", "WARNING"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    print(f"daemon pid {daemon.pid}, weed pid {server.proc.pid if server.proc else '?'}, "
          f"{size / MiB:.0f} MiB, {args.repeats} repeats", flush=True)  # fmt: skip
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        ini = RawInitiator(port, name="iqn.2026-11.org.targetd.bench:s3")
        ini.login(IQN)
        ini.sock.settimeout(600)  # a whole backup to a slow bucket is one command
        for lun in (SOURCE, *(changer for changer, _ in STORES.values())):
            ini.clear_unit_attentions(lun)  # a drive stays NOT READY until it is loaded
        for changer, drive in STORES.values():
            move(ini, changer, SLOT0, DRIVE0)
            ini.clear_unit_attentions(drive)
        results = run(ini, server, size, args.repeats)
        ini.close()
    finally:
        daemon.terminate()
        daemon.wait(60)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(size, results))
    return 0


Results = dict[str, dict[str, list[float]]]


def restore_list(size: int, tape: int, destination: int, *, list_id: int) -> bytes:
    """LID4: the 8 MiB records of a backup read back onto ``destination`` from LBA 0."""
    segments = b""
    for pos in range(0, size, RECORD):
        n = min(RECORD, size - pos)
        segments += struct.pack(
            ">BBHHHx3s2xHQ", 0x01, 0, 0x14, 0, 1, n.to_bytes(3, "big"), n // 512, pos // 512
        )
    cscds = cscd(tape, 1, 0) + cscd(destination, 0, 512)
    head = bytearray(48)
    head[0] = 0x01
    head[20:24] = list_id.to_bytes(4, "big")
    head[42:44] = len(cscds).to_bytes(2, "big")
    head[44:46] = len(segments).to_bytes(2, "big")
    return bytes(head) + cscds + segments


def raw_upload(server: S3Server, size: int, n: int) -> float:
    """Seconds to upload ``size`` bytes as one multipart upload of 8 MiB parts."""
    client = server.client()
    body = os.urandom(8 * MiB)
    key = f"raw/{n}"
    start = time.perf_counter()
    upload = client.create_multipart_upload(Bucket=server.bucket, Key=key)["UploadId"]
    parts = []
    for number in range(1, max(1, size // (8 * MiB)) + 1):
        answer = client.upload_part(
            Bucket=server.bucket, Key=key, UploadId=upload, PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    client.complete_multipart_upload(
        Bucket=server.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    seconds = time.perf_counter() - start
    client.delete_object(Bucket=server.bucket, Key=key)
    return seconds


def run(ini: RawInitiator, server: S3Server, size: int, repeats: int) -> Results:
    chunk = os.urandom(CHUNK)
    results: Results = {
        kind: {s: [] for s in STORES} for kind in ("backup", "restore", "host", "first", "durable")
    }
    results["raw"] = {"s3": []}
    list_id = [0]
    spare = {store: SLOT0 + 1 for store in STORES}

    def backup(store: str) -> None:
        _, drive = STORES[store]
        ok(ini, REWIND, drive)
        list_id[0] += 1
        params = backup_list(size, SOURCE, drive, list_id=list_id[0])
        ok(ini, xcopy_cdb(params), SOURCE, params)

    def restore(store: str) -> None:
        _, drive = STORES[store]
        ok(ini, REWIND, drive)
        list_id[0] += 1
        params = restore_list(size, drive, SOURCE, list_id=list_id[0])
        ok(ini, xcopy_cdb(params), SOURCE, params)

    def host(store: str) -> None:
        _, drive = STORES[store]
        ok(ini, REWIND, drive)
        for _ in range(size // CHUNK):
            write6(ini, drive, chunk)
        filemark(ini, drive)

    def timed(fn: Callable[[], None]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for r in range(repeats):
        order = list(STORES) if r % 2 == 0 else list(reversed(STORES))
        results["raw"]["s3"].append(raw_upload(server, size, r))
        for store in order:
            results["backup"][store].append(timed(functools.partial(backup, store)))
            results["restore"][store].append(timed(functools.partial(restore, store)))
            results["host"][store].append(timed(functools.partial(host, store)))
            changer, drive = STORES[store]
            move(ini, changer, DRIVE0, SLOT0)  # the backup cartridge out, a blank one in
            start = time.perf_counter()
            move(ini, changer, spare[store], DRIVE0)
            ini.clear_unit_attentions(drive)
            write6(ini, drive, chunk)
            results["first"][store].append(time.perf_counter() - start)
            filemark(ini, drive)
            results["durable"][store].append(time.perf_counter() - start)
            move(ini, changer, DRIVE0, spare[store])
            spare[store] += 1 if spare[store] < SLOT0 + 3 else -2
            move(ini, changer, SLOT0, DRIVE0)
            ini.clear_unit_attentions(drive)
        line = "  ".join(
            f"{store} {size / results['backup'][store][-1] / MiB:.0f}/"
            f"{size / results['host'][store][-1] / MiB:.0f}"
            for store in STORES
        )
        raw = size / results["raw"]["s3"][-1] / MiB
        print(f"repeat {r + 1}: MiB/s (backup/host) {line}  raw S3 {raw:.0f}", flush=True)
        restored = "  ".join(
            f"{store} {size / results['restore'][store][-1] / MiB:.0f}" for store in STORES
        )
        print(f"          restore MiB/s {restored}", flush=True)
    return results


def table(size: int, results: Results) -> str:
    raw = statistics.median(size / t / MiB for t in results["raw"]["s3"])
    lines = [
        "| measure | local tape | S3 tape | S3 / local | S3 / raw S3 | runs local | runs S3 |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for kind, label in (
        ("backup", "EXTENDED COPY backup, MiB/s"),
        ("restore", "EXTENDED COPY restore, MiB/s"),
        ("host", "host WRITE(6) 256 KiB + file mark, MiB/s"),
    ):
        rate = {s: [size / t / MiB for t in results[kind][s]] for s in STORES}
        med = {s: statistics.median(v) for s, v in rate.items()}
        against_raw = "" if kind == "restore" else f"{med['s3'] / raw:.2f}"  # raw is uploads
        lines.append(
            f"| {label} | {med['local']:.0f} | {med['s3']:.0f} | {med['s3'] / med['local']:.2f}"
            f" | {against_raw}"
            f" | {', '.join(f'{v:.0f}' for v in rate['local'])}"
            f" | {', '.join(f'{v:.0f}' for v in rate['s3'])} |"
        )
    for kind, label in (
        ("first", "load + first record, ms"),
        ("durable", "load + first record + file mark, ms"),
    ):
        ms = {s: [t * 1e3 for t in results[kind][s]] for s in STORES}
        med = {s: statistics.median(v) for s, v in ms.items()}
        lines.append(
            f"| {label} | {med['local']:.1f} | {med['s3']:.1f} | {med['s3'] / med['local']:.2f}"
            " | "
            f" | {', '.join(f'{v:.1f}' for v in ms['local'])}"
            f" | {', '.join(f'{v:.1f}' for v in ms['s3'])} |"
        )
    runs = ", ".join(f"{size / t / MiB:.0f}" for t in results["raw"]["s3"])
    lines.append(f"| raw S3 multipart upload (boto3, 8 MiB parts), MiB/s | | {raw:.0f} | | 1.00"
                 f" | | {runs} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
