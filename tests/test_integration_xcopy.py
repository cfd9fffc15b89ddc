"""EXTENDED COPY over the wire against a real daemon: QEMU's iscsi driver offloading a
qemu-img convert, a backup of a block LUN to the tape LUN read back with READ(6), and a
restore from tape with segment 01h, all driven by real or raw initiators."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import time
from pathlib import Path

from clients import run
from conftest import REPO, DaemonFactory
from raw_initiator import RawInitiator
from xcopy_lists import (
    cscd,
    lid1,
    lid4,
    rcr_cdb,
    seg_b2b,
    seg_b2s,
    seg_filemarks,
    seg_s2b,
    xcopy_cdb,
)

MiB = 1 << 20
CONFIG = """
[[target]]
name = "iqn.2026-11.org.targetd:xcopy"
[[target.lun]]
lun = 0
path = "a.img"
size = "64MiB"
[[target.lun]]
lun = 1
path = "b.img"
size = "64MiB"
[[target.lun]]
lun = 2
kind = "tape"
path = "tape.img"
size = "64MiB"
[[target.lun]]
lun = 3
kind = "filesink"
path = "sink"
capacity = "64MiB"
"""
TAPE = 2
GOOD, CHECK = 0x00, 0x02


def test_qemu_img_convert_offloads_every_chunk(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    src, dst = daemon.url(0), daemon.url(1)
    run(
        "qemu-io", "-f", "raw",
        "-c", "write -P 0x5a 0 8M", "-c", "write -P 0x33 20M 3M", "-c", "write -P 0x77 63M 1M",
        src,
    )  # fmt: skip
    run("qemu-io", "-f", "raw", "-c", "write -P 0xee 0 64M", dst)  # stale data everywhere
    proc = run(
        "qemu-img", "--trace", "iscsi_xcopy", "convert", "-n", "-C", "-f", "raw", "-O", "raw",
        src, dst,
    )  # fmt: skip
    trace = [line for line in proc.stderr.splitlines() if line.startswith("iscsi_xcopy")]
    # QEMU falls back to READ/WRITE silently when a copy fails; every offload says ret 0,
    # and the offloaded bytes are all the data there is (zeros go as WRITE SAME/UNMAP).
    assert trace, proc.stderr
    assert all(line.endswith(" ret 0") for line in trace), trace
    offloaded = sum(int(line.split(" bytes ")[1].split()[0]) for line in trace)
    assert offloaded == 12 * MiB
    out = run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, dst).stdout
    assert "Images are identical" in out


# -- raw initiator: block to tape and back ------------------------------------------------
def session(port: int, iqn: str, luns: tuple[int, ...] = (0, 1, TAPE)) -> RawInitiator:
    ini = RawInitiator(port)
    assert ini.login(iqn).bhs[36] == 0
    for lun in luns:
        ini.clear_unit_attentions(lun)
    return ini


def naa_of(ini: RawInitiator, lun: int) -> bytes:
    """The NAA designator of VPD 83h, as a backup application reads it."""
    status, page, _ = ini.command(bytes([0x12, 1, 0x83, 0, 255, 0]), lun=lun, read=255)
    assert status == GOOD
    offset = 4
    while offset < len(page):
        if page[offset + 1] & 0x3F == 0x03:  # LU association, NAA
            return page[offset : offset + 4 + page[offset + 3]]
        offset += 4 + page[offset + 3]
    raise AssertionError("no NAA designator")


def extended_copy(ini: RawInitiator, lun: int, params: bytes) -> tuple[int, bytes]:
    cdb = xcopy_cdb(len(params))
    status, _, sense = ini.command(cdb, lun=lun, data=params)
    return status, sense


def four_record_backup(disk: bytes, stream: bytes, list_id: int) -> bytes:
    """LID1 of a backup: blocks 0-1023 of ``disk`` to the stream LU ``stream`` as four
    128 KiB variable-length records, then a file mark."""
    records = [seg_b2s(0, 1, 128 * 1024, 256, lba) for lba in range(0, 1024, 256)]
    return lid1(
        [cscd(disk, 0x00, block_length=512), cscd(stream, 0x01)],
        [*records, seg_filemarks(1, 1)],
        list_id=list_id,
    )


def four_records_back(ini: RawInitiator, tape: int) -> bytes:
    """What a host reads after such a backup: REWIND, then four READ(6) of 128 KiB."""
    assert ini.command(bytes([0x01, 0, 0, 0, 0, 0]), lun=tape)[0] == GOOD
    back = b""
    for _ in range(4):
        status, record, _ = ini.command(bytes([0x08, 0, 0x02, 0, 0, 0]), lun=tape, read=128 * 1024)
        assert status == GOOD
        back += record
    return back


def write10(ini: RawInitiator, lba: int, data: bytes) -> None:
    cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, len(data) // 512, 0)
    assert ini.command(cdb, data=data)[0] == GOOD


def read10(ini: RawInitiator, lun: int, lba: int, blocks: int) -> bytes:
    cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)
    status, data, _ = ini.command(cdb, lun=lun, read=blocks * 512)
    assert status == GOOD
    return data


def test_backup_to_tape_and_restore_with_raw_initiator(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    image = b"".join(bytes([i]) * 512 for i in range(256)) * 4  # 512 KiB, every block differs
    with session(daemon.port, daemon.iqn) as ini:
        for n in range(0, len(image), 128 * 1024):
            write10(ini, n // 512, image[n : n + 128 * 1024])
        disk, spare, tape = naa_of(ini, 0), naa_of(ini, 1), naa_of(ini, TAPE)
        # Backup: LUN 0 blocks 0-1023 as four 128 KiB variable-length records, sent to the
        # tape LU itself (any LU of the target can take the command).
        status, sense = extended_copy(ini, TAPE, four_record_backup(disk, tape, list_id=1))
        assert (status, sense) == (GOOD, b"")
        # Read it back as a host would: REWIND, four READ(6) of 128 KiB, then the file mark.
        assert four_records_back(ini, TAPE) == image
        status, _, sense = ini.command(bytes([0x08, 0, 0x02, 0, 0, 0]), lun=TAPE, read=128 * 1024)
        assert status == CHECK and sense[2] & 0x80  # FILEMARK
        # Restore to LUN 1 at LBA 4096 with segment 01h, after REWIND.
        assert ini.command(bytes([0x01, 0, 0, 0, 0, 0]), lun=TAPE)[0] == GOOD
        segments = b"".join(
            seg_s2b(0, 1, 128 * 1024, 256, 4096 + lba) for lba in range(0, 1024, 256)
        )
        params = lid1(cscd(tape, 0x01) + cscd(spare, 0x00, block_length=512), segments, list_id=2)
        status, sense = extended_copy(ini, 1, params)
        assert (status, sense) == (GOOD, b"")
        restored = b"".join(read10(ini, 1, 4096 + n, 256) for n in range(0, 1024, 256))
        assert restored == image
        # RECEIVE COPY RESULTS over the wire: operating parameters name both stream segments.
        cdb = rcr_cdb(0x03, allocation=256)
        status, params_in, _ = ini.command(cdb, lun=TAPE, read=256)
        assert status == GOOD and {0x00, 0x01} <= set(params_in[44 : 44 + params_in[43]])


def test_a_lun_of_another_target_is_unreachable(targetd_factory: DaemonFactory) -> None:
    """An initiator may only name LUs of the target it is logged in to, whatever
    designator it puts in the parameter list (CVE-2020-28374 in LIO)."""
    config = (
        CONFIG
        + """
[[target]]
name = "iqn.2026-11.org.targetd:private"
[[target.lun]]
lun = 0
path = "private.img"
size = "16MiB"
"""
    )
    daemon = targetd_factory(config)
    with session(daemon.port, "iqn.2026-11.org.targetd:private", (0,)) as other:
        private = naa_of(other, 0)
    with session(daemon.port, daemon.iqn) as ini:
        disk = naa_of(ini, 0)
        b2b = seg_b2b(1, 0, 8, 0, 0)
        params = lid1(cscd(disk, 0x00, block_length=512) + cscd(private, 0x00), b2b, list_id=3)
        status, sense = extended_copy(ini, 0, params)
        assert status == CHECK and (sense[2] & 0x0F, sense[12], sense[13]) == (0x0A, 0x0D, 0x02)


def test_backup_to_a_file_sink_then_targetctl(
    targetd_factory: DaemonFactory, tmp_path: Path
) -> None:
    """A file sink LUN holds exactly the copied bytes, one plain file per backup;
    ``targetctl filesink list|export`` show and copy them out."""
    daemon = targetd_factory(CONFIG)
    image = bytes(range(256)) * 2048  # 512 KiB
    with session(daemon.port, daemon.iqn, (0, 3)) as ini:
        for n in range(0, len(image), 128 * 1024):
            write10(ini, n // 512, image[n : n + 128 * 1024])
        disk, sink = naa_of(ini, 0), naa_of(ini, 3)
        assert extended_copy(ini, 0, four_record_backup(disk, sink, list_id=1)) == (GOOD, b"")
    directory = daemon.state_dir / "sink"
    assert (directory / "file-0000.bin").read_bytes() == image

    def targetctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "targetd.ctl", "filesink", *args],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip

    listing = targetctl("list", str(directory)).stdout
    assert f"   0         524288  {hashlib.sha256(image).hexdigest()}" in listing
    assert "1 files, 524288 bytes" in listing
    targetctl("export", str(directory), "--file", "0", "-o", str(tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == image


CRASH_CONFIG = """
[[target]]
name = "iqn.2026-11.org.targetd:xcopy"
[[target.lun]]
lun = 0
path = "a.img"
size = "256MiB"
[[target.lun]]
lun = 2
kind = "tape"
path = "tape.img"
size = "1GiB"
"""


def copy_status_lid4(ini: RawInitiator, lun: int, list_id: int) -> bytes:
    status, data, _ = ini.command(rcr_cdb(0x05, list_id, 96), lun=lun, read=96)
    assert status == GOOD
    return data


def test_kill_9_during_a_backup_reads_as_failed_after_restart(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(CRASH_CONFIG)
    assert daemon.proc is not None
    # 256 MiB of LUN 0 as 32 records of 8 MiB: long enough to be killed in the middle.
    segments = b"".join(seg_b2s(0, 1, 8 * MiB, 16384, lba) for lba in range(0, 524288, 16384))
    with session(daemon.port, daemon.iqn, (0, TAPE)) as ini:
        disk, tape = naa_of(ini, 0), naa_of(ini, TAPE)
        params = lid4(
            cscd(disk, 0x00, block_length=512) + cscd(tape, 0x01), segments, list_id=77, immed=True
        )
        cdb = xcopy_cdb(len(params), 0x01)
        status, _, sense = ini.command(cdb, lun=TAPE, data=params)
        assert (status, sense) == (GOOD, b"")  # IMMED: the backup runs on
        # Killed in the middle: once a few records are on the tape, well before the end.
        deadline = time.monotonic() + 60
        while int.from_bytes(copy_status_lid4(ini, TAPE, 77)[16:24], "big") < 24 * MiB:
            assert time.monotonic() < deadline, "the backup does not progress"
            time.sleep(0.01)
        daemon.proc.kill()
        daemon.proc.wait()
    daemon.start()
    with session(daemon.port, daemon.iqn, (0, TAPE)) as ini:  # same initiator and ISID
        data = copy_status_lid4(ini, TAPE, 77)
        assert data[5] == 0x02, data.hex()  # failed, and why: a restart aborted it
        assert (data[32 + 2] & 0x0F, data[32 + 12], data[32 + 13]) == (0x0A, 0x29, 0x00)
        # What landed is reported: whole 8 MiB records, one per segment, as many as the
        # tape holds (one fewer if the kill fell between a record and its record-keeping).
        reported = int.from_bytes(data[16:24], "big")
        landed = int.from_bytes(data[24:26], "big")  # segments processed
        assert ini.command(bytes([0x01, 0, 0, 0, 0, 0]), lun=TAPE)[0] == GOOD  # REWIND
        space_to_eod = bytes([0x11, 0x03, 0, 0, 0, 0])
        assert ini.command(space_to_eod, lun=TAPE)[0] == GOOD
        status, position, _ = ini.command(bytes([0x34]) + bytes(9), lun=TAPE, read=20)
        assert status == GOOD
        on_tape = int.from_bytes(position[4:8], "big")  # records before end of data
        assert 3 <= landed < 32 and reported == landed * 8 * MiB, (landed, reported)
        assert on_tape - 1 <= landed <= on_tape, (landed, on_tape)
        # The tape lost its torn tail; a new backup of the same list succeeds.
        assert ini.command(bytes([0x01, 0, 0, 0, 0, 0]), lun=TAPE)[0] == GOOD
        params = lid4(
            cscd(disk, 0x00, block_length=512) + cscd(tape, 0x01), segments, list_id=78, immed=True
        )
        params = params[:15] + b"\x00" + params[16:]  # without IMMED: wait for the end
        status, _, sense = ini.command(cdb, lun=TAPE, data=params)
        assert (status, sense) == (GOOD, b"")
        assert copy_status_lid4(ini, TAPE, 78)[5] == 0x01
