"""Self-describing backups against a real daemon, through targetd-copy (iscsi:// URLs): the
end label the target writes carries the SHA-256 of the volume's bytes; a changed byte on
the tape, or a label that lies, fails `verify` and is refused by `restore`; a backup cut
off by a dead daemon is listed as partial, never sealed. docs/backup.md."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from clients import targetd_copy as tool
from conftest import REPO, DaemonFactory
from crc32c import crc32c
from pair_scsi import BlockClient
from test_integration_hostcopy import (
    FRESH,
    IQN,
    MIRROR,
    SIZE,
    SLOW_CONFIG,
    SOURCE,
    TAPE,
    split_pair,
    start,
)

from backing.tape_image import ENTRY, ENTRY_SIZE, HEADER_SIZE

MiB = 1 << 20


def records(image: Path) -> list[tuple[int, int]]:
    """(payload offset, length) of every record of a tape image, file marks left out."""
    raw = image.read_bytes()
    out = []
    at = HEADER_SIZE
    while at + ENTRY_SIZE <= len(raw):
        _magic, kind, _flags, length, _crc, _hcrc = ENTRY.unpack_from(raw, at)
        if kind == 1:
            out.append((at + ENTRY_SIZE, length))
        at += ENTRY_SIZE + (length if kind == 1 else 0)
    return out


def rewrite(image: Path, record: int, change: bytes, at: int, *, keep_crc: bool) -> None:
    """Overwrite bytes of a record's payload in place; with ``keep_crc`` its entry's CRCs
    are made to fit, so the tape reads it back without a medium error: only the digest can
    tell."""
    offset, length = records(image)[record]
    with image.open("r+b") as f:
        f.seek(offset + at)
        # A "change" equal to the bytes already there would leave the tape intact and the
        # test checking nothing (random data makes that 1 in 256 for a one-byte write).
        assert f.read(len(change)) != change, "the rewrite changes nothing"
        f.seek(offset + at)
        f.write(change)
        if keep_crc:
            f.seek(offset)
            payload = f.read(length)
            head_at = offset - ENTRY_SIZE
            f.seek(head_at)
            head = bytearray(f.read(ENTRY_SIZE))
            head[8:12] = crc32c(payload).to_bytes(4, "big")
            head[12:16] = crc32c(bytes(head[:12])).to_bytes(4, "big")
            f.seek(head_at)
            f.write(head)


def test_the_end_label_holds_the_sha256_of_the_split_image(targetd_factory: DaemonFactory) -> None:
    """The digest the target wrote equals the SHA-256 the test computes from the mirror's
    own file on the daemon's disk (the split image)."""
    daemon, client = start(targetd_factory)
    try:
        split_pair(daemon, client)
        tool("backup", daemon.url(MIRROR), daemon.url(TAPE), "--record-size", "256k")
        mirror_file = daemon.state_dir / IQN.replace(":", "_") / f"lun{MIRROR}.img"
        with mirror_file.open("rb") as f:
            expected = hashlib.file_digest(f, "sha256").hexdigest()
        listing = json.loads(tool("list", daemon.url(TAPE), "--json").stdout)
        assert listing[0]["state"] == "sealed" and listing[0]["sha256"] == expected
        tape = daemon.state_dir / "tape.img"
        end = tape.read_bytes()[slice(*_span(records(tape)[-1]))]
        assert json.loads(end[20:].rstrip(b"\0"))["sha256"] == expected
    finally:
        client.close()


def _span(rec: tuple[int, int]) -> tuple[int, int]:
    return rec[0], rec[0] + rec[1]


def test_a_flipped_byte_on_tape_fails_verify_and_restore(targetd_factory: DaemonFactory) -> None:
    daemon, client = start(targetd_factory)
    try:
        image = split_pair(daemon, client)
        tool("backup", daemon.url(MIRROR), daemon.url(TAPE))
        tool("verify", daemon.url(TAPE))
        tape = daemon.state_dir / "tape.img"
        # Record 3 of the tape is the volume's third MiB (record 0 is the head label).
        rewrite(tape, 3, bytes([image[2 * MiB + 77] ^ 0x10]), 77, keep_crc=True)
        bad = tool("verify", daemon.url(TAPE), check=False)
        assert bad.returncode == 1
        assert "file 0: DAMAGED: the data on the medium does not hash to the SHA-256 in its " \
            "end label" in bad.stderr  # fmt: skip
        assert "COPY ABORTED" in bad.stderr and "(0A/1D/00)" in bad.stderr
        bad = tool("verify", daemon.url(TAPE), "--host", check=False)
        assert bad.returncode == 1 and "DAMAGED: the data read back hashes to" in bad.stderr
        refused = tool("restore", daemon.url(TAPE), daemon.url(FRESH), check=False)
        assert refused.returncode == 1
        assert "DAMAGED" in refused.stderr and "restore refused (--force" in refused.stderr
        assert client.read(FRESH, 0, SIZE) == bytes(SIZE)  # not a byte written
        tool("restore", daemon.url(TAPE), daemon.url(FRESH), "--force")
        restored = client.read(FRESH, 0, SIZE)
        assert restored[2 * MiB + 77] == image[2 * MiB + 77] ^ 0x10
        assert restored[: 2 * MiB] == image[: 2 * MiB]
        # A flip the record's own CRC catches: a medium error, verify fails all the same.
        rewrite(tape, 5, bytes([image[4 * MiB] ^ 0xFF]), 0, keep_crc=False)
        bad = tool("verify", daemon.url(TAPE), check=False)
        assert bad.returncode == 1 and "UNRECOVERED READ ERROR" in bad.stderr
    finally:
        client.close()


def test_a_label_that_lies_is_caught(targetd_factory: DaemonFactory) -> None:
    """The end label's digest edited (the data untouched): verify recomputes, so it fails;
    list, which only reads labels, still shows what the label claims."""
    daemon, client = start(targetd_factory)
    try:
        split_pair(daemon, client)
        tool("backup", daemon.url(MIRROR), daemon.url(TAPE))
        tape = daemon.state_dir / "tape.img"
        end_offset, end_length = records(tape)[-1]
        end = tape.read_bytes()[end_offset : end_offset + end_length]
        at = end.index(b'"sha256":"') + len(b'"sha256":"')
        lie = b"0" if end[at : at + 1] != b"0" else b"1"
        rewrite(tape, len(records(tape)) - 1, lie, at, keep_crc=True)
        for extra in ([], ["--host"]):
            bad = tool("verify", daemon.url(TAPE), *extra, check=False)
            assert bad.returncode == 1 and "DAMAGED" in bad.stderr, (extra, bad.stderr)
        refused = tool("restore", daemon.url(TAPE), daemon.url(FRESH), check=False)
        assert refused.returncode == 1 and "restore refused" in refused.stderr
    finally:
        client.close()


def test_a_backup_cut_off_by_a_killed_daemon_is_partial(targetd_factory: DaemonFactory) -> None:
    """kill -9 of the tool and the daemon while a backup waits for its pair (policy 2):
    the tape holds its head label and no end label, not even a file mark. After the
    restart `list` shows it partial, `verify` and `restore` refuse it, and the next backup
    closes it with a file mark and is a complete tape file of its own."""
    daemon = targetd_factory(SLOW_CONFIG)
    assert daemon.proc is not None
    client = BlockClient(daemon.port, daemon.iqn, (SOURCE, MIRROR))
    image = os.urandom(SIZE)
    client.write(SOURCE, 0, image)
    tool("create", daemon.url(SOURCE), daemon.url(MIRROR), "--name", "db", "--policy", "2")
    tool("split", daemon.url(MIRROR))
    client.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hostcopy", "backup", daemon.url(MIRROR), daemon.url(TAPE)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    while not (line := proc.stderr.readline()).startswith("backup: "):
        assert line, "the tool ended before its copy started"
    time.sleep(0.3)
    proc.kill()  # the backup server dies too: nobody closes the backup with a file mark
    proc.communicate(timeout=30)
    daemon.proc.kill()
    daemon.proc.wait()
    daemon.start()
    listing = json.loads(tool("list", daemon.url(TAPE), "--json").stdout)
    assert [(e["file"], e["state"]) for e in listing] == [(0, "partial")]
    bad = tool("verify", daemon.url(TAPE), check=False)
    assert bad.returncode == 1 and "PARTIAL" in bad.stderr
    bad = tool("restore", daemon.url(TAPE), daemon.url(FRESH), check=False)
    assert bad.returncode == 1 and "PARTIAL" in bad.stderr
    client = BlockClient(daemon.port, daemon.iqn, (SOURCE, MIRROR))
    try:
        client.wait("SPLIT", lun=MIRROR)
        out = tool("backup", daemon.url(MIRROR), daemon.url(TAPE))
        assert "closed it with a file mark" in out.stderr
        listing = json.loads(tool("list", daemon.url(TAPE), "--json").stdout)
        assert [(e["file"], e["state"]) for e in listing] == [(0, "partial"), (1, "sealed")]
        assert listing[1]["sha256"] == hashlib.sha256(image).hexdigest()
        tool("verify", daemon.url(TAPE), "--file", "1")
    finally:
        client.close()


GROUP_CONFIG = f"""
[pairs]
chunk_size = "64KiB"

[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
size = "4MiB"
[[target.lun]]
lun = 1
size = "4MiB"
[[target.lun]]
lun = 2
size = "2MiB"
[[target.lun]]
lun = 3
size = "2MiB"
[[target.lun]]
lun = 4
kind = "tape"
path = "tape.img"
size = "64MiB"
[[pair]]
name = "data"
source_lun = 0
target_lun = 1
[[pair]]
name = "log"
source_lun = 2
target_lun = 3
[[group]]
name = "db"
pairs = ["data", "log"]
"""


def test_one_extended_copy_backs_up_every_secondary_of_a_group(
    targetd_factory: DaemonFactory,
) -> None:
    """`backup --group db`: the tool finds the group's target volumes (PAIR IN of every
    LUN), and one list writes one tape file per volume, each with its own labels and the
    SHA-256 of that volume at the group's split instant."""
    daemon = targetd_factory(GROUP_CONFIG)
    client = BlockClient(daemon.port, daemon.iqn, (0, 1, 2, 3))
    try:
        data, log = os.urandom(4 * MiB), os.urandom(2 * MiB)
        client.write(0, 0, data)
        client.write(2, 0, log)
        for lun in (1, 3):
            client.wait("DUPLEX", lun=lun)
        tool("split", daemon.url(1), "--wait")  # a member's split splits its group
        client.write(2, 0, b"\x55" * 65536)  # after the split: in neither backup
        out = tool("backup", "--group", "db", daemon.url(4))
        assert f"group db: {daemon.url(1)} {daemon.url(3)}" in out.stderr
        assert "1 list(s), 2 tape file(s)" in out.stderr
        listing = json.loads(tool("list", daemon.url(4), "--json").stdout)
        assert [(e["file"], e["pair"], e["group"], e["state"], e["sha256"]) for e in listing] == [
            (0, "data", "db", "sealed", hashlib.sha256(data).hexdigest()),
            (1, "log", "db", "sealed", hashlib.sha256(log).hexdigest()),
        ]
        assert listing[0]["split_time"] == listing[1]["split_time"] != ""
        assert listing[0]["id"] != listing[1]["id"]
        tool("verify", daemon.url(4), "--file", "0")
        tool("verify", daemon.url(4), "--file", "1")
        none = tool("backup", "--group", "nosuch", daemon.url(4), check=False)
        assert none.returncode == 1 and "no pair of group 'nosuch'" in none.stderr
    finally:
        client.close()
