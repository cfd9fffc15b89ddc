"""The hex examples of docs/xcopy.md, taken from the page and run against a daemon: the
LID1 backup list with its sg_raw CDB, and the LID4 split-and-backup list (example 4').
A list whose lengths do not add up, or a CDB whose length is not the list's, fails here."""

from __future__ import annotations

import os
import re
import shlex
import time

from conftest import REPO, DaemonFactory
from pair_scsi import BlockClient

from hostcopy.commands import inquiry, lu_designator

DOC = REPO / "docs" / "xcopy.md"
MiB = 1 << 20
CONFIG = """
[pairs]
chunk_size = "64KiB"
[[target]]
name = "iqn.2026-11.org.targetd:docs"
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
size = "64MiB"
"""
TAPE = 2


def hex_blocks() -> list[str]:
    return re.findall(r"```hex\n(.*?)```", DOC.read_text(), re.S)


def sg_raw_cdb(list_file: str) -> tuple[int, bytes]:
    """(-s length, CDB bytes) of the page's first sg_raw line that sends ``list_file``."""
    for line in DOC.read_text().splitlines():
        words = shlex.split(line.split("#")[0]) if line.startswith("sg_raw") else []
        if len(words) > 6 and words[3:5] == ["-i", list_file]:
            return int(words[2]), bytes(int(w, 16) for w in words[6:])
    raise AssertionError(f"no sg_raw line sends {list_file}")


def assemble(block: str, names: dict[str, bytes]) -> bytes:
    text = block
    for name, value in names.items():
        text = text.replace(name, value.hex())
    return bytes.fromhex("".join(text.split()))


def read_tape(client: BlockClient, records: int, size: int) -> bytes:
    client.ok(bytes([0x01, 0, 0, 0, 0, 0]), lun=TAPE)  # REWIND
    out = b""
    for _ in range(records):
        out += client.ok(bytes([0x08, 0]) + size.to_bytes(3, "big") + b"\0", lun=TAPE, read=size)
    status, _, sense = client.run(bytes([0x08, 0, 0, 2, 0, 0]), lun=TAPE, read=512)
    assert status == 2 and sense == (0x00, 0x00, 0x01)  # the file mark
    return out


def designators(client: BlockClient) -> dict[str, bytes]:
    """What the docs' lists call NAA0, NAA1 and NAAT: the LUs' designators (VPD page 83h)."""
    return {
        f"NAA{tag}": lu_designator(client.ok(inquiry(0x83, 255), lun=lun, read=255)).value
        for tag, lun in (("0", 0), ("1", 1), ("T", TAPE))
    }


def test_the_lid1_and_lid4_examples_run_as_written(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    client = BlockClient(daemon.port, daemon.iqn, (0, 1, TAPE))
    try:
        naa = designators(client)
        image = os.urandom(MiB)
        client.write(0, 0, image)
        backup, lid4 = hex_blocks()

        params = assemble(backup, naa)
        length, cdb = sg_raw_cdb("backup.bin")
        assert len(params) == length == 284
        assert len(cdb) == 16 and int.from_bytes(cdb[10:14], "big") == length
        client.ok(cdb, lun=TAPE, data=params)
        assert read_tape(client, 8, 128 * 1024) == image

        # 4': LUN 0 -> LUN 1 mirrored, then one LID4 list splits and backs up LUN 1.
        client.create(0, 1, b"db")
        client.wait("DUPLEX")
        client.ok(bytes([0x01, 0, 0, 0, 0, 0]), lun=TAPE)
        params = assemble(lid4, {**naa, "PP": b"\x00"})
        length, cdb = sg_raw_cdb("backup-lid4.bin")
        assert len(params) == length == 328
        assert int.from_bytes(cdb[10:14], "big") == length and cdb[:2] == b"\x83\x01"
        client.ok(cdb, lun=TAPE, data=params)
        client.write(0, 0, b"\xee" * 65536)  # after the split: not on the tape
        status_cdb = bytes([0x84, 0x05]) + (5).to_bytes(4, "big") + bytes(4)
        status_cdb += (96).to_bytes(4, "big") + bytes(2)
        deadline = time.monotonic() + 30
        while (state := client.ok(status_cdb, lun=TAPE, read=96)[5]) in (0x11, 0x12):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state == 0x01  # completed
        assert read_tape(client, 8, 128 * 1024) == image
    finally:
        client.close()


DEVICES = {"/dev/sdb": 0, "/dev/sg2": 0, "/dev/sdc": 1, "/dev/sg3": 1, "/dev/sg4": TAPE}


def policy_examples() -> list[tuple[str, list[str]]]:
    """(title, command lines) of each numbered example of "A worked example per policy"."""
    text = DOC.read_text()
    section = text[text.index("### A worked example per policy") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    examples: list[tuple[str, list[str]]] = []
    for line in block[1].splitlines():
        if m := re.match(r"# (\d'?)\. ", line):
            examples.append((m[1], []))
        elif examples and line.startswith(("sg_raw", "sg_copy_results")):
            examples[-1][1].append(line.split("#")[0].strip())
    return examples


def run_line(client: BlockClient, line: str, files: dict[str, bytes]) -> None:
    words = shlex.split(line)
    if words[0] == "sg_copy_results":  # --status --list_id=N DEV: COPY STATUS (LID1)
        list_id = int(words[2].split("=")[1])
        cdb = bytes([0x84, 0x00, list_id]) + bytes(7) + (12).to_bytes(4, "big") + bytes(2)
        deadline = time.monotonic() + 30
        while (state := client.ok(cdb, lun=DEVICES[words[3]], read=12)[4] & 0x7F) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state == 0x01, f"{line}: copy status {state:#x}"
        return
    data = b""
    if words[1] == "-s":
        data = files[words[4]]
        assert len(data) == int(words[2]), line
        words = [words[0], *words[5:]]
    cdb = bytes(int(w, 16) for w in words[2:])
    assert len(cdb) == 16, line
    if data:
        assert int.from_bytes(cdb[10:14], "big") == len(data), line
    client.ok(cdb, lun=DEVICES[words[1]], data=data)


def test_every_policy_example_backs_up_the_split_image(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    client = BlockClient(daemon.port, daemon.iqn, (0, 1, TAPE))
    try:
        naa = designators(client)
        backup, lid4 = hex_blocks()
        files = {
            # "backup.bin is the list above with CSCD 0 naming LUN 1"
            "backup.bin": assemble(backup, {**naa, "NAA0": naa["NAA1"]}),
            "backup-lid4.bin": assemble(lid4, {**naa, "PP": b"\x00"}),
        }
        client.write(0, 0, os.urandom(8 * MiB))
        client.create(0, 1, b"db")
        client.wait("DUPLEX")
        examples = policy_examples()
        assert [title for title, _ in examples] == ["1", "2", "3", "4", "4'"]
        for title, lines in examples:
            image = client.read(0, 0, MiB)
            client.ok(bytes([0x01, 0, 0, 0, 0, 0]), lun=TAPE)  # mt rewind
            for line in lines:
                run_line(client, line, files)
            client.write(0, 0, os.urandom(MiB))  # after the split: not on the tape
            assert read_tape(client, 8, 128 * 1024) == image, f"example {title}"
            client.wait("SPLIT")
            client.ok(bytes([0xC4, 0x03, 0xFF, 0xFF]) + bytes(12))  # RESYNC
            client.wait("DUPLEX")
    finally:
        client.close()
