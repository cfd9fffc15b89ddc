"""A tape library whose cartridges live in an S3 bucket, through a real daemon and a real
S3 server (SeaweedFS, the ``s3_server`` fixture): a drive writes, spaces, locates and
reads back an S3 tape; a kill -9 mid-write loses no acknowledged record and the tape
goes on; an abandoned upload is cleaned up; EXTENDED COPY backs a LUN up to an S3 tape
and restores it byte for byte; ``targetctl library`` makes cartridges in the bucket and
lists their usage."""

from __future__ import annotations

import itertools
import json
import os
import random
import struct
import threading

from conftest import DaemonFactory
from library_targets import library_targets
from raw_initiator import RawInitiator
from s3_server import S3Server
from test_integration_library import move, sense_of
from test_integration_xcopy import extended_copy, naa_of, read10
from xcopy_lists import cscd, lid1, seg_b2s, seg_filemarks, seg_s2b

IQN = "iqn.2026-11.org.targetd.test:vtl"
CHANGER, DRIVE = 0, 1
DRIVE0, MAIL0, SLOT0 = 0x0100, 0x0200, 0x0400
GOOD, CHECK_CONDITION = 0x00, 0x02
MiB = 1 << 20
CHUNK = 256 << 10  # the most data one raw initiator PDU carries here
_prefixes = itertools.count()


def config(s3: S3Server, prefix: str, disk: bool = False) -> str:
    text = library_targets(
        IQN,
        capacity="1GiB",
        tapes=("S30001L6", "S30002L6"),
        drives=1,
        store=f"s3://{s3.bucket}/{prefix}",
        s3_endpoint=s3.endpoint,
    )
    if disk:
        text += '[[target.lun]]\nlun = 2\npath = "disk.img"\nsize = "16MiB"\n'
    return text


def new_prefix() -> str:
    return f"it{os.getpid()}-{next(_prefixes)}/"


def session(port: int) -> RawInitiator:
    ini = RawInitiator(port)
    assert ini.login(IQN).bhs[36] == 0, "login failed"
    ini.clear_unit_attentions(CHANGER)
    return ini


def load(ini: RawInitiator, slot: int = SLOT0) -> None:
    assert move(ini, slot, DRIVE0)[0] == GOOD
    ini.clear_unit_attentions(DRIVE)


def write(ini: RawInitiator, record: bytes) -> int:
    cdb = bytes([0x0A, 0]) + len(record).to_bytes(3, "big") + b"\0"
    return ini.command(cdb, lun=DRIVE, data=record)[0]


def read(ini: RawInitiator, length: int) -> tuple[int, bytes, bytes]:
    cdb = bytes([0x08, 0]) + length.to_bytes(3, "big") + b"\0"
    return ini.command(cdb, lun=DRIVE, read=length)


def filemarks(ini: RawInitiator, count: int) -> int:
    return ini.command(bytes([0x10, 0]) + count.to_bytes(3, "big") + b"\0", lun=DRIVE)[0]


def rewind(ini: RawInitiator) -> int:
    return ini.command(bytes([0x01, 0, 0, 0, 0, 0]), lun=DRIVE)[0]


def space(ini: RawInitiator, code: int, count: int) -> tuple[int, bytes, bytes]:
    cdb = bytes([0x11, code]) + count.to_bytes(3, "big", signed=True) + b"\0"
    return ini.command(cdb, lun=DRIVE)


def locate(ini: RawInitiator, block: int) -> int:
    cdb = bytes([0x2B, 0, 0]) + block.to_bytes(4, "big") + bytes(3)
    return ini.command(cdb, lun=DRIVE)[0]


def position(ini: RawInitiator) -> int:
    status, data, _ = ini.command(bytes([0x34, 0]) + bytes(8), lun=DRIVE, read=20)
    assert status == GOOD
    return int.from_bytes(data[4:8], "big")


def record(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


def uploads(s3: S3Server, prefix: str) -> list[str]:
    answer = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix)
    return [u["Key"] for u in answer.get("Uploads", ())]


def test_an_s3_tape_writes_spaces_locates_and_reads(
    targetd_factory: DaemonFactory, s3_server: S3Server
) -> None:
    prefix = new_prefix()
    # Uploads some crashed host left under the cartridges: gone once the library starts.
    client = s3_server.client()
    for barcode in ("S30001L6", "S30002L6"):
        stale = f"{prefix}{barcode}/seg-00000099"
        upload = client.create_multipart_upload(Bucket=s3_server.bucket, Key=stale)
        client.upload_part(
            Bucket=s3_server.bucket, Key=stale, UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
        )
    assert len(uploads(s3_server, prefix)) == 2
    daemon = targetd_factory(config(s3_server, prefix))
    assert uploads(s3_server, prefix) == []
    assert daemon.stderr.count('event="abandoned upload aborted"') == 2, daemon.stderr
    # The configuration's cartridges were made in the bucket, not as files.
    assert client.head_object(Bucket=s3_server.bucket, Key=f"{prefix}S30002L6/tape.json")
    assert not list((daemon.state_dir / "vtl").glob("*.img"))
    files = [[record(10 * f + i, 3000 + 1000 * i) for i in range(3)] for f in range(3)]
    with session(daemon.port) as ini:
        load(ini)
        for f in files:
            for r in f:
                assert write(ini, r) == GOOD
            assert filemarks(ini, 1) == GOOD
        assert position(ini) == 12
        # SPACE back two file marks (to the near side of the second: object 7), over it,
        # then one record forward: the second record of the third file.
        assert space(ini, 1, -2)[0] == GOOD and position(ini) == 7
        assert space(ini, 1, 1)[0] == GOOD and position(ini) == 8
        assert space(ini, 0, 1)[0] == GOOD
        assert read(ini, len(files[2][1])) == (GOOD, files[2][1], b"")
        assert locate(ini, 4) == GOOD
        assert read(ini, len(files[1][0])) == (GOOD, files[1][0], b"")
        # SPACE to end of data, then READ: BLANK CHECK, END-OF-DATA DETECTED.
        assert space(ini, 3, 0)[0] == GOOD and position(ini) == 12
        assert sense_of(read(ini, 10)) == (0x8, 0x00, 0x05)
        assert rewind(ini) == GOOD
        back = []
        for f in files:
            for r in f:
                back.append(read(ini, len(r)))
            status, _, sense = read(ini, 10)
            assert status == CHECK_CONDITION and sense[2] & 0x80  # the file mark
        assert back == [(GOOD, r, b"") for f in files for r in f]
    listing = daemon.targetctl("library", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {e["barcode"]: e for e in json.loads(listing.stdout)["elements"] if e["barcode"]}
    used = sum(16 + len(r) for f in files for r in f) + 3 * 16
    assert (rows["S30001L6"]["used"], rows["S30001L6"]["capacity"]) == (used, 1 << 30)
    assert (rows["S30002L6"]["used"], rows["S30002L6"]["capacity"]) == (0, 1 << 30)
    made = daemon.targetctl("library", "import", "S30003L6")
    assert made.returncode == 0, made.stderr
    assert client.head_object(Bucket=s3_server.bucket, Key=f"{prefix}S30003L6/tape.json")
    out = daemon.targetctl("library", "export", "S30003L6", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["image"] == f"s3://{s3_server.bucket}/{prefix}exported/S30003L6/"


def writer(ini: RawInitiator, acked: list[int], stop: threading.Event) -> None:
    """Writes 256 KiB records until the daemon dies; ``acked`` gets each one's number as
    its GOOD arrives."""
    i = 0
    try:
        while not stop.is_set():
            if write(ini, record(i, CHUNK)) != GOOD:
                return
            acked.append(i)
            i += 1
    except Exception:  # the connection died with the daemon
        return


def test_kill_9_mid_write_keeps_every_acknowledged_record(
    targetd_factory: DaemonFactory, s3_server: S3Server
) -> None:
    prefix = new_prefix()
    daemon = targetd_factory(config(s3_server, prefix))
    acked: list[int] = []
    stop = threading.Event()
    ini = session(daemon.port)
    load(ini)
    thread = threading.Thread(target=writer, args=(ini, acked, stop))
    thread.start()
    try:
        # Killed mid-stream, with several parts in the bucket and records in the spool.
        while len(acked) < 80 and thread.is_alive():
            thread.join(0.01)
        daemon.kill()
        thread.join(30)
    finally:
        stop.set()
        ini.close()
    assert not thread.is_alive()
    assert len(acked) >= 80, daemon.stderr
    assert uploads(s3_server, prefix) == [f"{prefix}S30001L6/seg-00000001"]
    daemon.start()
    assert uploads(s3_server, prefix) == []  # completed with what had landed
    with session(daemon.port) as ini:
        ini.clear_unit_attentions(DRIVE)
        for i in acked:
            assert read(ini, CHUNK) == (GOOD, record(i, CHUNK), b""), f"record {i}"
        # At most the one record in flight at the kill landed too; then end of data.
        status, data, sense = read(ini, CHUNK)
        if status == GOOD:
            assert data == record(len(acked), CHUNK)
            status, data, sense = read(ini, CHUNK)
        assert sense_of((status, data, sense)) == (0x8, 0x00, 0x05)
        end = position(ini)
        # Appending goes on from the end of data; everything reads back after a REWIND.
        assert write(ini, b"after the crash") == GOOD
        assert filemarks(ini, 1) == GOOD
        assert locate(ini, end) == GOOD
        assert read(ini, 15) == (GOOD, b"after the crash", b"")
        status, _, sense = read(ini, 10)
        assert status == CHECK_CONDITION and sense[2] & 0x80  # the file mark
        assert rewind(ini) == GOOD
        assert read(ini, CHUNK) == (GOOD, record(0, CHUNK), b"")
    assert "mended after a crash" in daemon.stderr


def test_extended_copy_backs_up_to_an_s3_tape_and_restores(
    targetd_factory: DaemonFactory, s3_server: S3Server
) -> None:
    daemon = targetd_factory(config(s3_server, new_prefix(), disk=True))
    image = random.Random(7).randbytes(12 * MiB)
    with session(daemon.port) as ini:
        ini.clear_unit_attentions(2)
        for n in range(0, len(image), CHUNK):
            cdb = struct.pack(">BBIBHB", 0x2A, 0, n // 512, 0, CHUNK // 512, 0)
            assert ini.command(cdb, lun=2, data=image[n : n + CHUNK])[0] == GOOD
        load(ini)
        disk, tape = naa_of(ini, 2), naa_of(ini, DRIVE)
        # Backup: the 12 MiB as 1 MiB records, then a file mark; no host in the path.
        segments = b"".join(
            seg_b2s(0, 1, MiB, MiB // 512, lba) for lba in range(0, 12 * MiB // 512, 2048)
        )
        mark = seg_filemarks(1, 1)
        params = lid1(
            cscd(disk, 0x00, block_length=512) + cscd(tape, 0x01), segments + mark, list_id=1
        )
        assert extended_copy(ini, DRIVE, params) == (GOOD, b"")
        # Wipe the disk, then restore it from the tape.
        for n in range(0, len(image), CHUNK):
            cdb = struct.pack(">BBIBHB", 0x2A, 0, n // 512, 0, CHUNK // 512, 0)
            assert ini.command(cdb, lun=2, data=bytes(CHUNK))[0] == GOOD
        assert rewind(ini) == GOOD
        segments = b"".join(
            seg_s2b(0, 1, MiB, MiB // 512, lba) for lba in range(0, 12 * MiB // 512, 2048)
        )
        params = lid1(cscd(tape, 0x01) + cscd(disk, 0x00, block_length=512), segments, list_id=2)
        assert extended_copy(ini, 2, params) == (GOOD, b"")
        restored = b"".join(read10(ini, 2, lba, 512) for lba in range(0, 12 * MiB // 512, 512))
        assert restored == image


def test_a_tape_lun_on_s3_keeps_its_records_across_a_restart(
    targetd_factory: DaemonFactory, s3_server: S3Server
) -> None:
    prefix = new_prefix()
    daemon = targetd_factory(
        f'[[target]]\nname = "{IQN}"\n[[target.lun]]\nlun = 1\nkind = "tape"\n'
        f'capacity = "64MiB"\nstore = "s3://{s3_server.bucket}/{prefix}LUNTAPE"\n'
        f's3_endpoint = "{s3_server.endpoint}"\n'
    )
    client = s3_server.client()
    assert client.head_object(Bucket=s3_server.bucket, Key=f"{prefix}LUNTAPE/tape.json")
    records = [record(100 + i, 70000) for i in range(4)]
    ini = RawInitiator(daemon.port)
    assert ini.login(IQN).bhs[36] == 0
    with ini:
        ini.clear_unit_attentions(DRIVE)
        for r in records:
            assert write(ini, r) == GOOD  # no sync point: SIGTERM writes them out
    daemon.restart()
    ini = RawInitiator(daemon.port)
    assert ini.login(IQN).bhs[36] == 0
    with ini:
        ini.clear_unit_attentions(DRIVE)
        assert [read(ini, len(r)) for r in records] == [(GOOD, r, b"") for r in records]
        assert sense_of(read(ini, 10)) == (0x8, 0x00, 0x05)
    spool = daemon.state_dir / "iqn.2026-11.org.targetd.test_vtl" / "lun1-spool"
    assert spool.is_dir() and not list(spool.iterdir())  # all in the bucket after SIGTERM


def test_records_a_power_cut_took_are_reported_by_targetctl(
    targetd_factory: DaemonFactory, s3_server: S3Server
) -> None:
    daemon = targetd_factory(config(s3_server, new_prefix()))
    records = [record(200 + i, 4096) for i in range(3)]
    with session(daemon.port) as ini:
        load(ini)
        for r in records:
            assert write(ini, r) == GOOD
        daemon.kill()
    # What a power cut does to an unsynced spool: the last record's bytes garbled.
    spool = daemon.state_dir / "vtl" / "spool" / "S30001L6.spool.0"
    with open(spool, "r+b") as f:
        f.seek(spool.stat().st_size - 1000)
        f.write(b"\xa5" * 100)
    daemon.start()
    assert "1 acknowledged record(s) or file mark(s) could not be recovered" in daemon.stderr
    listing = daemon.targetctl("library", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    drive = next(e for e in json.loads(listing.stdout)["elements"] if e["address"] == DRIVE0)
    assert (drive["barcode"], drive["lost"]) == ("S30001L6", 1)
    text = daemon.targetctl("library", "list")
    assert "1 record(s) lost in a crash" in text.stdout
    with session(daemon.port) as ini:
        ini.clear_unit_attentions(DRIVE)
        assert [read(ini, 4096) for _ in range(2)] == [(GOOD, r, b"") for r in records[:2]]
        assert sense_of(read(ini, 4096)) == (0x8, 0x00, 0x05)


def test_targetctl_export_of_an_s3_cartridge_reports_progress(
    targetd_factory: DaemonFactory, s3_server: S3Server
) -> None:
    """The export (server-side copies of every object) shows its progress on stderr, a
    plain line when stderr is not a terminal, and ends as before: all of the cartridge
    under ``exported/``, nothing left in the library."""
    prefix = new_prefix()
    daemon = targetd_factory(config(s3_server, prefix))
    records = [record(300 + i, CHUNK) for i in range(32)]  # 8 MiB
    with session(daemon.port) as ini:
        load(ini)
        for r in records:
            assert write(ini, r) == GOOD
        assert filemarks(ini, 1) == GOOD
        assert move(ini, DRIVE0, MAIL0)[0] == GOOD
    client, bucket = s3_server.client(), s3_server.bucket

    def objects(under: str) -> dict[str, int]:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=under)
        return {o["Key"][len(under) :]: o["Size"] for o in listing.get("Contents", ())}

    before = objects(f"{prefix}S30001L6/")
    total = sum(before.values())
    assert total > len(records) * CHUNK
    out = daemon.targetctl("library", "export", "S30001L6")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"S30001L6: out of the library, image at s3://{bucket}/{prefix}exported/S30001L6/"
    )
    lines = out.stderr.splitlines()
    # The first report (nothing copied yet) is printed at once; then the summary.
    assert lines[0].startswith(f"export S30001L6:   0.0% 0.0/{total / MiB:.1f} MiB "), lines
    assert lines[-1].startswith(f"export S30001L6: done, {total / MiB:.1f} MiB in "), lines
    assert "\r" not in out.stderr and "\x1b" not in out.stderr  # no bar off a terminal
    assert objects(f"{prefix}exported/S30001L6/") == before
    assert objects(f"{prefix}S30001L6/") == {}
