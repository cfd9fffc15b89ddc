"""The default configuration's tape LUN over iSCSI: records and file marks written and read
back, sense on the wire for reads past end of data, a torn tail cut on restart, and
``targetctl tape new|list|export`` on the image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO, DaemonFactory
from raw_initiator import RawInitiator

from backing import tape_image

TAPE_LUN = 2
CHECK_CONDITION = 0x02


def u24(n: int) -> bytes:
    return (n & 0xFFFFFF).to_bytes(3, "big")


def session(port: int, iqn: str) -> RawInitiator:
    ini = RawInitiator(port)
    resp = ini.login(iqn)
    assert resp.bhs[36] == 0, "login failed"
    ini.clear_unit_attentions(TAPE_LUN)
    return ini


def write_record(ini: RawInitiator, data: bytes) -> tuple[int, bytes, bytes]:
    return ini.command(bytes([0x0A, 0]) + u24(len(data)) + b"\0", lun=TAPE_LUN, data=data)


def read_record(ini: RawInitiator, length: int) -> tuple[int, bytes, bytes]:
    return ini.command(bytes([0x08, 0]) + u24(length) + b"\0", lun=TAPE_LUN, read=length)


def targetctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "targetd.ctl", "tape", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_tape_lun_round_trip_restart_and_export(
    targetd_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = targetd_factory()
    image = daemon.state_dir / "tape0.img"
    with session(daemon.port, daemon.iqn) as ini:
        status, inquiry, _ = ini.command(bytes([0x12, 0, 0, 0, 96, 0]), lun=TAPE_LUN, read=96)
        assert status == 0 and inquiry[0] == 0x01 and inquiry[1] == 0x80
        assert inquiry[16:32] == b"VIRTUAL-TAPE    "
        records = [b"first" * 100, b"second" * 1000, b"x"]
        for rec in records[:2]:
            assert write_record(ini, rec)[0] == 0
        assert ini.command(bytes([0x10, 0, 0, 0, 1, 0]), lun=TAPE_LUN)[0] == 0  # WEOF 1
        assert write_record(ini, records[2])[0] == 0
        assert ini.command(bytes([0x01, 0, 0, 0, 0, 0]), lun=TAPE_LUN)[0] == 0  # REWIND
        assert read_record(ini, 500) == (0, records[0], b"")
        # A 6000-byte record into a 100-byte buffer: 100 bytes, ILI, residue -5900.
        status, data, sense = read_record(ini, 100)
        assert status == CHECK_CONDITION and data == records[1][:100]
        residue = (-5900 & 0xFFFFFFFF).to_bytes(4, "big")
        assert sense[:8] == bytes([0xF0, 0, 0x20]) + residue + b"\x0a"
        # The short record is told with NO SENSE: a notice, not an error.
        (tape,) = [lun for lun in daemon.targetctl_json("status")["luns"]
                   if lun["lun"] == TAPE_LUN]  # fmt: skip
        stats = tape["stats"]
        assert (stats["errors"], stats["attentions"], stats["notices"]) == (0, 1, 1), stats
        assert "errors 0, unit attentions 1, notices 1" in daemon.targetctl("status").stdout
    size = image.stat().st_size
    daemon.stop()
    with image.open("ab") as f:  # a record header that never got its payload
        f.write(b"TR\x01\x00" + bytes(12))
    daemon.start()
    with session(daemon.port, daemon.iqn) as ini:
        assert ini.command(bytes([0x11, 1, 0, 0, 1, 0]), lun=TAPE_LUN)[0] == 0  # SPACE 1 mark
        assert read_record(ini, 1) == (0, b"x", b"")
        # Past end of data: BLANK CHECK, END-OF-DATA DETECTED, INFORMATION = the request.
        status, data, sense = read_record(ini, 64)
        assert status == CHECK_CONDITION and data == b""
        assert sense[:18] == bytes(
            [0xF0, 0, 0x08, 0, 0, 0, 64, 0x0A, 0, 0, 0, 0, 0x00, 0x05, 0, 0, 0, 0]
        )
    assert image.stat().st_size == size  # the torn header was cut, nothing else
    daemon.stop()

    listing = targetctl("list", str(image))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[1].split() == ["0", "2", "6500", "500..6000", "file", "mark"]
    assert lines[2].split() == ["1", "1", "1", "1", "end", "of", "data"]
    assert lines[3].startswith("2 files, 3 records, 6501 bytes;")
    out = tmp_path / "file0.bin"
    export = targetctl("export", str(image), "--file", "0", "-o", str(out))
    assert export.returncode == 0, export.stderr
    assert out.read_bytes() == records[0] + records[1]
    missing = targetctl("export", str(image), "--file", "5", "-o", str(out))
    assert missing.returncode == 1 and "has no file 5" in missing.stderr


def test_targetctl_tape_new_refuses_to_overwrite(tmp_path: Path) -> None:
    image = tmp_path / "blank.img"
    made = targetctl("new", str(image), "--capacity", "1MiB")
    assert made.returncode == 0, made.stderr
    assert image.stat().st_size == 64
    again = targetctl("new", str(image), "--capacity", "1MiB")
    assert again.returncode == 1 and "exists" in again.stderr
    bad = targetctl("new", str(tmp_path / "b.img"), "--capacity", "1GB")
    assert bad.returncode == 1 and "--capacity" in bad.stderr
    listing = targetctl("list", str(image))
    assert listing.returncode == 0
    assert "0 files, 0 records, 0 bytes; 0 of 1048576 bytes used (0.0%)" in listing.stdout


def test_tape_export_to_a_pipe_its_reader_closed_ends_quietly(tmp_path: Path) -> None:
    """`targetctl tape export IMG --file 0 -o - | head -c 100`: the reader closes the pipe
    after 100 bytes; targetctl ends with SIGPIPE's shell status and no traceback."""
    image = tmp_path / "t.img"
    tape_image.create(image, 64 << 20)
    with tape_image.TapeImage(image) as tape:
        for _ in range(64):
            tape.append_record(b"\x5a" * (256 << 10))
        tape.append_filemarks(1)
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c",
         f'"{sys.executable}" -m targetd.ctl tape export "{image}" --file 0 -o - | head -c 100'],
        cwd=REPO, capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.stdout == b"\x5a" * 100
    assert done.returncode == 141, done.stderr
    assert b"Traceback" not in done.stderr, done.stderr
