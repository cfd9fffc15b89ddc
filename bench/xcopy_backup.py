"""EXTENDED COPY backup benchmark against a real daemon (one run, on loopback).

The same bytes (``--size``, default 1 GiB of random data, written straight into LUN 0's
image before the daemon starts, page cache warm) are copied:

1. by ``cp`` on the host, image file to file (the ceiling);
2. block to tape with one EXTENDED COPY (8 MiB variable records, then a file mark);
3. block to a file sink with one EXTENDED COPY;
4. block to block host-mediated over iSCSI, ``qemu-img convert -n`` (reads and writes
   cross the network twice);
5. block to block offloaded, ``qemu-img convert -n -C`` (QEMU's EXTENDED COPY per chunk).

Each run starts after ``sync``, so none pays for the previous one's write-back; none waits
for its own (cp does not either).

    python3 bench/xcopy_backup.py               # 1 GiB, about a minute
    python3 bench/xcopy_backup.py --size 256MiB
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
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


def config(size: int) -> str:
    return f"""
[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
path = "a.img"
size = {size}
[[target.lun]]
lun = 1
path = "b.img"
size = {size}
[[target.lun]]
lun = 2
kind = "tape"
path = "tape.img"
size = {2 * size + 64 * MiB}
[[target.lun]]
lun = 3
kind = "filesink"
path = "sink"
capacity = {2 * size}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cscd(lun: int, device_type: int, block_length: int) -> bytes:
    naa = Identity(f"{IQN}/lun{lun}").naa
    head = bytes([0xE4, device_type, 0, 0, 0x01, 0x03, 0, len(naa)])
    return head + naa.ljust(20, b"\0") + bytes([0]) + block_length.to_bytes(3, "big")


def backup_list(size: int, destination: int) -> bytes:
    blocks = RECORD // 512
    segments = b"".join(
        struct.pack(">BBHHHx3s2xHQ", 0, 0, 0x14, 0, 1, RECORD.to_bytes(3, "big"), blocks, lba)
        for lba in range(0, size // 512, blocks)
    )
    segments += struct.pack(">BBH2xHx3s", 0x10, 0, 0x08, 1, (1).to_bytes(3, "big"))
    cscds = cscd(0, 0, 512) + cscd(destination, 1, 0)
    head = bytearray(48)
    head[0] = 0x01  # LID4: 256 segments fit its 2-byte lengths
    head[20:24] = destination.to_bytes(4, "big")
    head[42:44] = len(cscds).to_bytes(2, "big")
    head[44:46] = len(segments).to_bytes(2, "big")
    return bytes(head) + cscds + segments


def timed(label: str, size: int, fn) -> float:  # type: ignore[no-untyped-def]
    os.sync()  # each run starts without the previous one's dirty pages being written back
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    print(f"{label:<44} {elapsed:7.2f} s {size / elapsed / MiB:8.0f} MiB/s", flush=True)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1GiB")
    args = ap.parse_args()
    size = parse_size(args.size, "--size")
    work = Path(tempfile.mkdtemp(prefix="xcopy-bench-"))
    state = work / "state"
    state.mkdir()
    image = state / "a.img"
    with image.open("wb") as f:
        for _ in range(size // (64 * MiB)):
            f.write(os.urandom(64 * MiB))
    (work / "t.toml").write_text(config(size))
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "targetd", "serve", "--listen", f"127.0.0.1:{port}",
         "--state-dir", str(state), "--config", str(work / "t.toml")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"iscsi://127.0.0.1:{port}/{IQN}"
        results = {}
        results["cp"] = timed("cp (host, file to file: the ceiling)", size,
                              lambda: shutil.copyfile(image, work / "cp.img"))  # fmt: skip
        ini = RawInitiator(port)
        ini.login(IQN)
        for lun in (0, 2, 3):
            ini.clear_unit_attentions(lun)

        def xcopy(destination: int) -> None:
            params = backup_list(size, destination)
            cdb = bytes([0x83, 0x01]) + bytes(8) + len(params).to_bytes(4, "big") + bytes(2)
            status, _, sense = ini.command(cdb, lun=0, data=params)
            assert status == 0, sense.hex()

        results["tape"] = timed("EXTENDED COPY block to tape", size, lambda: xcopy(2))
        results["sink"] = timed("EXTENDED COPY block to file sink", size, lambda: xcopy(3))
        ini.close()
        qemu = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw"]
        results["host"] = timed(
            "qemu-img convert -n (host-mediated, iSCSI)", size,
            lambda: subprocess.run([*qemu, f"{url}/0", f"{url}/1"], check=True),
        )  # fmt: skip
        results["offload"] = timed(
            "qemu-img convert -n -C (EXTENDED COPY)", size,
            lambda: subprocess.run([*qemu, "-C", f"{url}/0", f"{url}/1"], check=True),
        )  # fmt: skip
        sink_file = state / "sink" / "file-0000.bin"
        same = sink_file.read_bytes() == image.read_bytes()
        print(f"file sink equals LUN 0: {same}")
        for key in ("tape", "sink"):
            print(
                f"{key}: {results['cp'] / results[key]:.2f}x cp, "
                f"{results['host'] / results[key]:.1f}x the host-mediated copy"
            )
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
