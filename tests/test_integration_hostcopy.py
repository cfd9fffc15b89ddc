"""targetd-copy (hostcopy/) against a real daemon through iscsi:// URLs (libiscsi): split,
backup, list, verify, restore, the refusals, a failed copy's sense in words, --dry-run.
The tool runs as a subprocess, as a backup engineer runs it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from clients import targetd_copy as tool
from conftest import REPO, Daemon, DaemonFactory
from pair_scsi import BlockClient

from xcopy import params

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd:hostcopy"
SIZE = 8 * MiB
CONFIG = f"""
[pairs]
chunk_size = "64KiB"
copy_rate = "64MiB"

[[target]]
name = "{IQN}"
[[target.lun]]
lun = 0
size = "8MiB"
[[target.lun]]
lun = 1
size = "8MiB"
[[target.lun]]
lun = 2
kind = "tape"
path = "tape.img"
size = "128MiB"
[[target.lun]]
lun = 3
kind = "filesink"
path = "sink"
capacity = "128MiB"
[[target.lun]]
lun = 4
size = "4MiB"
[[target.lun]]
lun = 5
size = "8MiB"
[[target.lun]]
lun = 6
size = "8MiB"
block_size = 4096
"""
SOURCE, MIRROR, TAPE, SINK, SMALL, FRESH, WIDE = 0, 1, 2, 3, 4, 5, 6


def start(factory: DaemonFactory) -> tuple[Daemon, BlockClient]:
    daemon = factory(CONFIG)
    return daemon, BlockClient(daemon.port, daemon.iqn, (SOURCE, MIRROR, FRESH, SMALL))


def split_pair(daemon: Daemon, client: BlockClient) -> bytes:
    """LUN 0 paired with LUN 1, random data written, split; returns the split image."""
    image = os.urandom(SIZE)
    client.write(SOURCE, 0, image)
    tool("create", daemon.url(SOURCE), daemon.url(MIRROR), "--name", "db", "--wait")
    out = tool("split", daemon.url(MIRROR), "--json").stdout
    assert '"name": "db"' in out
    return image


def test_backup_list_verify_restore_through_iscsi_urls(targetd_factory: DaemonFactory) -> None:
    daemon, client = start(targetd_factory)
    try:
        image = split_pair(daemon, client)
        client.write(SOURCE, 0, b"\xee" * 65536)  # after the split: not in the backup
        # 32 KiB records: 256 data segments, more than one list holds beside label and mark
        out = tool("backup", daemon.url(MIRROR), daemon.url(TAPE), "--record-size", "32k")
        assert "256 records of 32768 bytes" in out.stderr
        assert "2 list(s), 1 tape file(s)" in out.stderr
        assert "backup: done, 8.0 MiB" in out.stderr

        listing = tool("list", daemon.url(TAPE)).stdout.splitlines()
        assert len(listing) == 4, listing
        assert listing[1].split()[:5] == ["0", "sealed", listing[1].split()[2], str(SIZE), "db"]
        # The rest of the head label under its row: every field the label carries is shown.
        assert listing[2] == (
            "      group -, backup policy reflect-first, 512-byte blocks in 32768-byte "
            f"records, from {daemon.url(MIRROR)}"
        )
        assert listing[3].startswith("sealed: ") and "the data was not read" in listing[3]
        digest = hashlib.sha256(image).hexdigest()
        assert listing[1].split()[6] == digest[:16]

        verified = tool("verify", daemon.url(TAPE), daemon.url(MIRROR)).stdout
        assert f"verified: {SIZE} bytes and equals" in verified
        assert f"sha256 {digest}; matches its end label" in verified
        by_target = tool("verify", daemon.url(TAPE)).stdout
        assert f"verified by the target: {SIZE} bytes read back hash to the SHA-256 of the " \
            f"end label; sha256 {digest}" in by_target  # fmt: skip
        bad = tool("verify", daemon.url(TAPE), daemon.url(SOURCE), check=False)
        assert bad.returncode == 1
        assert "MISMATCH at byte 0" in bad.stderr

        tool("restore", daemon.url(TAPE), daemon.url(FRESH))
        assert client.read(FRESH, 0, SIZE) == image

        small = tool("restore", daemon.url(TAPE), daemon.url(SMALL), check=False)
        assert small.returncode == 1
        assert f"holds {4 * MiB} bytes, the backup {SIZE}: restore refused" in small.stderr
        assert client.read(SMALL, 0, 65536) == bytes(65536)  # nothing written
        # The same size in 4096-byte blocks: refused, even forced, before anything is sent.
        for extra in ([], ["--force"]):
            wide = tool("restore", daemon.url(TAPE), daemon.url(WIDE), *extra, check=False)
            assert (wide.returncode, wide.stderr) == (1, (
                f"targetd-copy restore: {daemon.url(WIDE)} has 4096-byte blocks, the backup "
                "512-byte ones: restore refused\n"
            )), wide.stderr  # fmt: skip
        # --force restores the records that fit.
        tool("restore", daemon.url(TAPE), daemon.url(SMALL), "--force")
        assert client.read(SMALL, 0, 4 * MiB) == image[: 4 * MiB]

        # A second backup goes after the first; restore --file 1 takes it.
        tool("resync", daemon.url(MIRROR), "--wait")
        tool("split", daemon.url(MIRROR), "--wait")
        tool("backup", daemon.url(MIRROR), daemon.url(TAPE))
        assert len(tool("list", daemon.url(TAPE), "--json").stdout.split('"file"')) == 3
        client.write(FRESH, 0, bytes(SIZE))
        tool("restore", daemon.url(TAPE), daemon.url(FRESH), "--file", "1")
        second = client.read(FRESH, 0, SIZE)
        assert second[:65536] == b"\xee" * 65536 and second[65536:] == image[65536:]
        missing = tool("restore", daemon.url(TAPE), daemon.url(FRESH), "--file", "5", check=False)
        assert missing.returncode == 1 and "fewer than 5 backups" in missing.stderr
    finally:
        client.close()


def test_a_file_sink_holds_one_file_per_backup(targetd_factory: DaemonFactory) -> None:
    """Backups to a file sink, which cannot SPACE: the tool reads past earlier files.
    Each file is the label and the volume; a flipped byte makes verify fail."""
    daemon, client = start(targetd_factory)
    try:
        image = split_pair(daemon, client)
        tool("backup", daemon.url(MIRROR), daemon.url(SINK))
        tool("backup", daemon.url(MIRROR), daemon.url(SINK))
        lines = tool("list", daemon.url(SINK)).stdout.splitlines()
        assert [line.split()[:2] for line in lines[1:5:2]] == [["0", "sealed"], ["1", "sealed"]]
        sink = daemon.state_dir / "sink"
        files = sorted(p.name for p in sink.iterdir())
        assert files == ["file-0000.bin", "file-0001.bin"]
        body = (sink / "file-0001.bin").read_bytes()
        assert body[:20] == b"TARGETD-COPY LABEL 1" and body[512 : 512 + SIZE] == image
        # The end label the target wrote: the SHA-256 of exactly the volume's bytes.
        end = body[512 + SIZE :]
        assert len(end) == 512 and end.startswith(b"TARGETD LABEL END 1\n")
        fields = json.loads(end[20:].rstrip(b"\0"))
        assert fields["sha256"] == hashlib.sha256(image).hexdigest()
        assert (fields["bytes"], fields["complete"]) == (SIZE, True)
        tool("verify", daemon.url(SINK), daemon.url(MIRROR), "--file", "1")
        tool("verify", daemon.url(SINK), "--file", "1")

        flipped = bytearray(body)
        flipped[512 + 4096] ^= 0x01
        (sink / "file-0001.bin").write_bytes(flipped)
        bad = tool("verify", daemon.url(SINK), daemon.url(MIRROR), "--file", "1", check=False)
        assert bad.returncode == 1
        assert "MISMATCH at byte 4096" in bad.stderr
        # Without a volume to compare with, the target reads it back and finds it damaged.
        bad = tool("verify", daemon.url(SINK), "--file", "1", check=False)
        assert bad.returncode == 1
        assert "file 1: DAMAGED: the data on the medium does not hash to the SHA-256" in bad.stderr
        bad = tool("verify", daemon.url(SINK), "--file", "1", "--host", check=False)
        assert bad.returncode == 1 and "DAMAGED: the data read back hashes to" in bad.stderr
        # ... and a restore of it is refused before a byte is written, unless forced.
        client.write(FRESH, 0, bytes(SIZE))
        bad = tool("restore", daemon.url(SINK), daemon.url(FRESH), "--file", "1", check=False)
        assert bad.returncode == 1
        assert "DAMAGED" in bad.stderr and "restore refused (--force" in bad.stderr
        assert client.read(FRESH, 0, SIZE) == bytes(SIZE)
        tool("restore", daemon.url(SINK), daemon.url(FRESH), "--file", "1", "--force")
        assert client.read(FRESH, 0, SIZE) == bytes(flipped[512 : 512 + SIZE])
        # list reads labels only: a flipped data byte still shows as sealed, and the
        # legend under the table says the data was not read.
        listed = tool("list", daemon.url(SINK)).stdout.splitlines()
        assert listed[3].split()[:2] == ["1", "sealed"]
        assert "the data was not read" in listed[5]
        # An end label that lies about the count it covers is caught from the labels.
        lying = json.loads(end[20:].rstrip(b"\0"))
        lying["bytes"] = SIZE - 512
        lie = b"TARGETD LABEL END 1\n" + json.dumps(lying, separators=(",", ":")).encode()
        (sink / "file-0001.bin").write_bytes(body[: 512 + SIZE] + lie.ljust(512, b"\0"))
        listed = tool("list", daemon.url(SINK), "--json").stdout
        assert [e["state"] for e in json.loads(listed)] == ["sealed", "inconsistent"]
        bad = tool("verify", daemon.url(SINK), "--file", "1", "--host", check=False)
        assert bad.returncode == 1
        assert f"INCONSISTENT: the end label counts {SIZE - 512} bytes" in bad.stderr
    finally:
        client.close()


def test_a_copy_the_target_refuses_exits_1_with_the_sense_in_words(
    targetd_factory: DaemonFactory,
) -> None:
    daemon, client = start(targetd_factory)
    try:
        client.write(SOURCE, 0, os.urandom(SIZE))
        tool("create", daemon.url(SOURCE), daemon.url(MIRROR), "--name", "db", "--wait")
        # The mirror of a DUPLEX pair is not a split image: refused, nothing written.
        proc = tool("backup", daemon.url(MIRROR), daemon.url(TAPE), check=False)
        assert proc.returncode == 1
        assert "COPY ABORTED, COPY SOURCE PAIR NOT SPLIT (0A/80/02)" in proc.stderr
        assert "the source is the target volume of a pair that is not split" in proc.stderr
        assert tool("list", daemon.url(TAPE)).stdout.splitlines()[1:] == []
        # A pair command in the wrong state: ILLEGAL REQUEST 80h/02h, in words.
        proc = tool("resync", daemon.url(MIRROR), check=False)
        assert proc.returncode == 1
        assert "PAIR OUT RESYNC: ILLEGAL REQUEST, PAIR WRONG STATE (05/80/02)" in proc.stderr
        # A volume that is not a tape as the destination: the tool says so before sending.
        proc = tool("backup", daemon.url(MIRROR), daemon.url(FRESH), check=False)
        assert proc.returncode == 1 and "is not a tape or file sink" in proc.stderr
        # A LUN in no pair: said plainly (PAIR IN answers SIMPLEX/SIMPLEX with zeros).
        assert tool("status", daemon.url(FRESH)).stdout == (
            f"LUN {FRESH}: in no pair (SIMPLEX); targetd-copy create SOURCE MIRROR\n"
        )
        # A disk named where the backup's medium goes: said before any tape command.
        for command in (["list"], ["verify"], ["restore", daemon.url(FRESH)]):
            proc = tool(command[0], daemon.url(SOURCE), *command[1:], check=False)
            assert proc.returncode == 1
            assert proc.stderr == (
                f"targetd-copy {command[0]}: {daemon.url(SOURCE)} is not a tape or file sink "
                "(type 0x0)\n"
            )
        # A pair command sent to the tape: said before the target's INVALID OPCODE.
        for command in ("split", "status"):
            proc = tool(command, daemon.url(TAPE), check=False)
            assert proc.returncode == 1
            assert proc.stderr == (
                f"targetd-copy {command}: {daemon.url(TAPE)} is not a block volume (type 0x1): "
                "pairs are of disks\n"
            )
        # `devices` with nothing logged in: a reason, not just a header and exit status 1.
        proc = tool("devices", "--target", "iqn.2026-11.org.nobody:x", check=False)
        assert proc.returncode == 1
        assert proc.stderr.startswith(
            "no iSCSI SCSI devices of iqn.2026-11.org.nobody:x in /sys: log in with open-iscsi"
        )
        # Bad URLs: one line each that says what is wrong, exit status 1.
        for url, why in [
            ("iscsi://127.0.0.1:1/iqn.x/0", "cannot connect to 127.0.0.1:1: Connection refused"),
            (daemon.url(9), "logged in, but the target has no LUN 9 (iscsi-ls -s lists its LUNs)"),
            (
                f"iscsi://{daemon.portal}/iqn.2026-11.org.nobody:x/0",
                f"the portal {daemon.portal} has no such target (iscsi-ls lists its targets): "
                "Failed to log in to target. Status: Target not found(515)",
            ),
        ]:
            proc = tool("status", url, check=False)
            assert proc.returncode == 1
            assert proc.stderr == f"targetd-copy status: {url}: {why}\n"
        proc = tool("list", "iscsi://garbage", check=False)
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "iscsi://garbage: Invalid URL iscsi://garbage" in proc.stderr
    finally:
        client.close()


def test_dry_run_writes_the_lists_and_the_sg_raw_lines(
    targetd_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon, client = start(targetd_factory)
    try:
        split_pair(daemon, client)
        out = tool(
            "backup", daemon.url(MIRROR), daemon.url(TAPE), "--dry-run", "--list-id", "40",
            "--record-size", "2MiB", "--list-dir", str(tmp_path),
        ).stdout  # fmt: skip
        path = tmp_path / "backup-list-40.bin"
        data = path.read_bytes()
        cdb_length = " ".join(f"{b:02x}" for b in len(data).to_bytes(4, "big"))
        # sg_raw cannot open an iscsi:// URL: the lines name the tape's node as $DEV, and
        # the script they make stops at once, saying how to find it, while DEV is unset.
        assert (
            f'sg_raw -s {len(data)} -i {path} "$DEV" 83 01 00 00 00 00 00 00 00 00 '
            f"{cdb_length} 00 00"
        ) in out
        assert 'sg_raw -r 1024 "$DEV" 84 05 00 00 00 28 00 00 00 00 00 00 04 00 00 00' in out
        bindir = tmp_path / "bin"
        bindir.mkdir()
        (bindir / "sg_raw").write_text('#!/bin/sh\necho "sg_raw $*"\n')
        (bindir / "sg_raw").chmod(0o755)
        env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
        env.pop("DEV", None)
        unset = subprocess.run(["bash", "-c", out], env=env, capture_output=True, text=True)
        assert unset.returncode != 0 and unset.stdout == ""
        assert (
            f"DEV: set DEV to the /dev/sgN of LUN {TAPE} of {daemon.iqn}: targetd-copy devices "
            f"--target {daemon.iqn} --lun {TAPE} --node sg"
        ) in unset.stderr
        ran = subprocess.run(
            ["bash", "-c", out], env={**env, "DEV": "/dev/sg9"}, capture_output=True, text=True
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines()[0].startswith(f"sg_raw -s {len(data)} -i {path} /dev/sg9 ")
        decoded = params.decode(params.LID4, data)
        assert decoded.list_id == 40 and decoded.immed
        kinds = [s.type_code for s in decoded.segments]
        assert kinds == [
            params.INLINE_TO_STREAM,
            params.START_DIGEST,
            *[params.BLOCK_TO_STREAM] * 4,
            params.WRITE_LABEL,
            params.WRITE_FILEMARKS,
        ]
        label = decoded.segments[6]
        backup_id = decoded.inline_data[label.source_offset : label.source_offset + 32]
        head = json.loads(decoded.inline_data[21:512].rstrip(b"\0"))
        assert backup_id.decode() == head["id"] and len(head["id"]) == 32
        # Nothing was sent: the tape is still blank.
        assert tool("list", daemon.url(TAPE)).stdout.splitlines()[1:] == []
    finally:
        client.close()


def test_the_package_installs_targetd_copy() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["targetd-copy"] == "hostcopy.cli:main"
    assert "hostcopy*" in project["tool"]["setuptools"]["packages"]["find"]["include"]


# The pair's copy of SIZE paced to about 8 s from `create`: the backup below waits for it
# (policy 2), so the tool is still polling when the test interrupts it, even when starting
# three Python processes takes seconds on a loaded machine (at 2 MiB/s, 4 s, a backup was
# seen done before its first poll).
SLOW_CONFIG = CONFIG.replace('copy_rate = "64MiB"', 'copy_rate = "1MiB"')


def wait_for_first_progress_line(proc: subprocess.Popen[str]) -> None:
    """Waits for the tool's first progress line (after its first RECEIVE COPY STATUS: the
    list is in and the copy runs)."""
    assert proc.stderr is not None
    while not (line := proc.stderr.readline()).startswith("backup: "):
        assert line, "the tool ended before its copy started"
    assert "%" in line, f"the copy ended before the tool's first poll: {line!r}"


def start_a_paced_backup(
    daemon: Daemon, client: BlockClient, image: bytes, *options: str
) -> subprocess.Popen[str]:
    """``image`` written to the source, a pair made (its copy paced by SLOW_CONFIG, policy 2:
    the backup waits for it) and split, and `targetd-copy backup` of the mirror to the tape
    started with ``options``: returned once it polls (its first progress line read)."""
    client.write(SOURCE, 0, image)
    tool("create", daemon.url(SOURCE), daemon.url(MIRROR), "--name", "db", "--policy", "2")
    tool("split", daemon.url(MIRROR))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hostcopy", "backup", daemon.url(MIRROR), daemon.url(TAPE),
         *options],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_first_progress_line(proc)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc


def test_an_interrupted_backup_is_aborted_and_closed_with_a_file_mark(
    targetd_factory: DaemonFactory,
) -> None:
    """Ctrl-C while an IMMED copy runs: the tool sends COPY OPERATION ABORT and closes the
    partial backup with a file mark, so the next backup is a tape file of its own."""
    daemon = targetd_factory(SLOW_CONFIG)
    client = BlockClient(daemon.port, daemon.iqn, (SOURCE, MIRROR))
    try:
        image = os.urandom(SIZE)
        # The backup waits for the paced copy (about 8 s) to finish.
        proc = start_a_paced_backup(daemon, client, image)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "aborted (COPY OPERATION ABORT)" in err
        assert "closed with a file mark" in err
        client.wait("SPLIT", lun=MIRROR)
        time.sleep(0.5)
        tool("backup", daemon.url(MIRROR), daemon.url(TAPE))
        listing = json.loads(tool("list", daemon.url(TAPE), "--json").stdout)
        assert [(e["file"], e["state"]) for e in listing] == [(0, "partial"), (1, "sealed")]
        assert (
            listing[0]["sha256"] == "" and listing[1]["sha256"] == hashlib.sha256(image).hexdigest()
        )
        broken = tool("verify", daemon.url(TAPE), "--file", "0", check=False)
        assert broken.returncode == 1 and "file 0: PARTIAL" in broken.stderr
        broken = tool("verify", daemon.url(TAPE), "--file", "0", "--host", check=False)
        assert broken.returncode == 1 and "PARTIAL" in broken.stderr
        refused = tool("restore", daemon.url(TAPE), daemon.url(FRESH), "--file", "0", check=False)
        assert refused.returncode == 1 and "PARTIAL" in refused.stderr
        tool("verify", daemon.url(TAPE), daemon.url(MIRROR), "--file", "1")
        tool("verify", daemon.url(TAPE), "--file", "1")
    finally:
        client.close()


def test_ctrl_c_pressed_again_does_not_cut_the_abort_short(
    targetd_factory: DaemonFactory,
) -> None:
    """Ctrl-C pressed several times in a row (as people do): the first stops the backup;
    the ones after it are ignored while the tool aborts the copy and closes the partial
    backup, so the file mark never lands in a copy still running."""
    daemon = targetd_factory(SLOW_CONFIG)
    client = BlockClient(daemon.port, daemon.iqn, (SOURCE, MIRROR))
    try:
        proc = start_a_paced_backup(daemon, client, os.urandom(SIZE))
        for _ in range(20):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.002)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "aborted (COPY OPERATION ABORT)" in err and "closed with a file mark" in err, err
        assert "Traceback" not in err, err
        client.wait("SPLIT", lun=MIRROR)
        tool("backup", daemon.url(MIRROR), daemon.url(TAPE))
        listing = json.loads(tool("list", daemon.url(TAPE), "--json").stdout)
        assert [(e["file"], e["state"]) for e in listing] == [(0, "partial"), (1, "sealed")]
    finally:
        client.close()


# targetd-copy with Ctrl-C landing at a chosen moment: "after-last-poll", once the last
# RECEIVE COPY STATUS said COMPLETED; "before-first-poll", once the EXTENDED COPY was taken,
# and the copy has ended before the tool polls it.
CTRL_C_AT = """
import sys, time
from hostcopy import cli, ops
real_send, real_status = ops.send_list, ops.copy_status
calls = []
def send_list(*args, **kwargs):
    status = real_send(*args, **kwargs)
    raise KeyboardInterrupt
def copy_status(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:
        time.sleep(3)  # an 8 MiB copy ends meanwhile
        raise KeyboardInterrupt
    return real_status(*args, **kwargs)
if sys.argv[1] == "after-last-poll":
    ops.send_list = send_list
else:
    ops.copy_status = copy_status
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("moment", ["after-last-poll", "before-first-poll"])
def test_ctrl_c_after_the_copy_completed_leaves_the_backup_whole(
    targetd_factory: DaemonFactory, moment: str
) -> None:
    """A Ctrl-C that lands once the backup's last list has completed: the backup is
    sealed, so the tool says so and exits 0, with no file mark after it (before, it wrote
    one, leaving an empty tape file behind a backup it called partial: 'do not restore
    it')."""
    daemon, client = start(targetd_factory)
    try:
        image = split_pair(daemon, client)
        proc = subprocess.run(
            [sys.executable, "-c", CTRL_C_AT, moment, "backup", daemon.url(MIRROR),
             daemon.url(TAPE)],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        whole = "interrupted after the last list had completed: the backup is whole"
        assert whole in proc.stderr
        assert "backup: done, 8.0 MiB" in proc.stderr
        assert "file mark" not in proc.stderr and "aborted" not in proc.stderr
        listing = json.loads(tool("list", daemon.url(TAPE), "--json").stdout)
        assert [(e["file"], e.get("state"), e.get("sha256")) for e in listing] == [
            (0, "sealed", hashlib.sha256(image).hexdigest())
        ]
    finally:
        client.close()


CLOSE_PARTIAL = """
import sys
from hostcopy import cli, runtime
with runtime.opened(sys.argv[1]) as tape:
    cli._close_partial(tape)
"""


def test_an_interrupted_backup_is_closed_only_if_the_tape_ends_inside_it(
    targetd_factory: DaemonFactory,
) -> None:
    """What the tool does after an interrupted copy, on a tape that already ends with a
    file mark (the target reported the copy aborted as it wrote its own file mark, or
    before it wrote anything): no file mark more, which would be an empty tape file."""
    daemon, client = start(targetd_factory)
    try:
        split_pair(daemon, client)
        tool("backup", daemon.url(MIRROR), daemon.url(TAPE))
        proc = subprocess.run(
            [sys.executable, "-c", CLOSE_PARTIAL, daemon.url(TAPE)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "the tape ends with a file mark already: nothing to close" in proc.stderr
        listing = json.loads(tool("list", daemon.url(TAPE), "--json").stdout)
        assert [(e["file"], e.get("state")) for e in listing] == [(0, "sealed")]
    finally:
        client.close()


def test_devices_of_two_targets_are_refused_before_anything_is_sent(
    targetd_factory: DaemonFactory,
) -> None:
    other = CONFIG + '\n[[target]]\nname = "iqn.2026-11.org.targetd:other"\n'
    other += '[[target.lun]]\nlun = 0\nkind = "tape"\npath = "other.img"\nsize = "64MiB"\n'
    daemon = targetd_factory(other)
    foreign_tape = daemon.url(None) + "/iqn.2026-11.org.targetd:other/0"
    proc = tool("backup", daemon.url(MIRROR), foreign_tape, check=False)
    assert proc.returncode == 1
    assert "are LUNs of different targets" in proc.stderr
    assert f"({IQN}, iqn.2026-11.org.targetd:other)" in proc.stderr
    proc = tool("restore", foreign_tape, daemon.url(FRESH), check=False)
    assert proc.returncode == 1 and "different targets" in proc.stderr


def test_two_volumes_in_one_extended_copy_are_two_tape_files(
    targetd_factory: DaemonFactory,
) -> None:
    """A database's data and log mirrors backed up by one command, one list: file 0 and
    file 1 of the tape, each restorable on its own."""
    daemon, client = start(targetd_factory)
    try:
        image = split_pair(daemon, client)
        log = os.urandom(SIZE)
        client.write(FRESH, 0, log)  # LUN 5 stands in for the log volume here
        out = tool("backup", daemon.url(MIRROR), daemon.url(FRESH), daemon.url(TAPE)).stderr
        assert "1 list(s), 2 tape file(s)" in out
        assert "backup: done, 16.0 MiB" in out
        listing = json.loads(tool("list", daemon.url(TAPE), "--json").stdout)
        assert [(e["file"], e["pair"], e["length"], e["state"], e["sha256"]) for e in listing] == [
            (0, "db", SIZE, "sealed", hashlib.sha256(image).hexdigest()),
            (1, "", SIZE, "sealed", hashlib.sha256(log).hexdigest()),
        ]
        tool("verify", daemon.url(TAPE), daemon.url(MIRROR), "--file", "0")
        tool("verify", daemon.url(TAPE), daemon.url(FRESH), "--file", "1")
        client.write(FRESH, 0, bytes(SIZE))
        tool("restore", daemon.url(TAPE), daemon.url(FRESH), "--file", "1")
        assert client.read(FRESH, 0, SIZE) == log
        tool("restore", daemon.url(TAPE), daemon.url(FRESH), "--file", "0")
        assert client.read(FRESH, 0, SIZE) == image
    finally:
        client.close()


# The tool's own bound on a silent target, short here so the test is quick either way.
COMMAND_TIMEOUT = 5


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("sig", "message"),
    [
        (signal.SIGKILL, "lost the connection to the target"),
        (signal.SIGSTOP, f"the target did not answer within {COMMAND_TIMEOUT} s"),
    ],
    ids=["killed", "hung"],
)
def test_a_daemon_lost_mid_copy_fails_the_backup_within_the_bound(
    targetd_factory: DaemonFactory, sig: signal.Signals, message: str
) -> None:
    """kill -9 of targetd (the connection drops) or SIGSTOP (it stays open, unanswered)
    while the tool polls RECEIVE COPY STATUS: the tool exits 1 naming the lost connection
    within its command timeout, never waiting forever, never 'done'."""
    daemon = targetd_factory(SLOW_CONFIG)
    client = BlockClient(daemon.port, daemon.iqn, (SOURCE, MIRROR))
    try:
        proc = start_a_paced_backup(
            daemon, client, os.urandom(SIZE), "--command-timeout", str(COMMAND_TIMEOUT)
        )
    finally:
        client.close()
    try:
        assert daemon.proc is not None
        os.kill(daemon.proc.pid, sig)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=COMMAND_TIMEOUT * 3)
        took = time.monotonic() - killed
        assert proc.returncode == 1, err
        assert message in err, err
        assert "backup: stopped" in err and "backup: done" not in err
        # The timeout, and a second's logout for each other session (the source volume).
        assert took < COMMAND_TIMEOUT + 3, took
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if sig == signal.SIGSTOP and daemon.proc is not None:
            os.kill(daemon.proc.pid, signal.SIGKILL)  # a stopped daemon would not hear TERM
        if daemon.proc is not None:
            daemon.proc.wait()


# Reads LUN 0 over and over while SIGINTs arrive (counted by a handler, so the loop goes on:
# what matters is where the signal lands, not Python's exception). Before, one landing in
# libiscsi's poll() made it return "Poll failed" with the command still queued (the tool then
# freed the task under it); now the command in flight completes and the next one works.
CTRL_C_LOOP = """
import signal, sys
from hostcopy.libiscsi import IscsiDevice
dev = IscsiDevice(sys.argv[1])
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0x08, 0, 0])  # 1 MiB of 512-byte blocks
seen = []
signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
print("ready", flush=True)
while len(seen) < int(sys.argv[2]):
    result = dev.execute(READ10, read=1 << 20)
    assert result.status == 0 and len(result.data) == 1 << 20, result
assert dev.execute(bytes(6)).status == 0  # TEST UNIT READY after them all
dev.close()
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("signals", len(seen), flush=True)
sys.stdin.read()  # until the test has stopped signalling
"""


def test_ctrl_c_lands_between_commands_never_inside_one(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    interrupts = 150
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_LOOP, daemon.url(SOURCE), str(interrupts)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    stop = threading.Event()

    def interrupt() -> None:
        while not stop.is_set() and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.003)

    sender = threading.Thread(target=interrupt)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        sender.start()
        said = proc.stdout.readline()
        stop.set()
        sender.join()
        _, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        proc.kill()
    assert said == f"signals {interrupts}\n", err
    assert proc.returncode == 0, err
