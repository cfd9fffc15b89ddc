"""docs/tape.md's `targetctl tape` block, run line by line as written from a directory whose
``var/targetd`` is the daemon's state directory (as in a checkout running scripts/serve.sh),
after the tape the page lists was written through the tape LU: the listing must be the
page's, character for character."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, DaemonFactory
from raw_initiator import RawInitiator
from s3_server import S3Server

DOC = REPO / "docs" / "tape.md"
TAPE_LUN = 2  # the default configuration's 8 GiB tape, var/targetd/tape0.img


def targetctl_block() -> list[str]:
    text = DOC.read_text().split("## `targetctl tape`", 1)[1]
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "docs/tape.md has no targetctl tape block"
    return block.group(1).splitlines()


def write_files(port: int, iqn: str, counts: list[int], size: int) -> None:
    with RawInitiator(port) as ini:
        assert ini.login(iqn).bhs[36] == 0
        ini.clear_unit_attentions(TAPE_LUN)
        write6 = bytes([0x0A, 0]) + size.to_bytes(3, "big") + b"\0"
        for count in counts:
            for _ in range(count):
                assert ini.command(write6, lun=TAPE_LUN, data=b"r" * size)[0] == 0
            assert ini.command(bytes([0x10, 0, 0, 0, 1, 0]), lun=TAPE_LUN)[0] == 0  # WEOF 1


def test_the_targetctl_tape_block_runs_as_written(
    targetd_factory: DaemonFactory, tmp_path: Path
) -> None:
    block = targetctl_block()
    commands = [line for line in block if line.startswith("targetctl ")]
    listing = block[block.index(commands[1]) + 1 : block.index(commands[2])]
    sizes = [re.split(r" {2,}", row.strip()) for row in listing[1:-1]]
    daemon = targetd_factory()
    write_files(daemon.port, daemon.iqn, [int(s[1]) for s in sizes], int(sizes[0][3]))
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "targetd").symlink_to(daemon.state_dir)
    said = []
    for line in commands:
        argv = line.split("#", 1)[0].split()
        done = subprocess.run(
            [sys.executable, "-m", "targetd.ctl", *argv[1:]],
            cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"{line}: {done.stderr}"
        said.append(done.stdout)
    assert said[1].splitlines() == listing
    assert (tmp_path / "file1.bin").read_bytes() == b"r" * int(sizes[1][2])
    assert (daemon.state_dir / "tape1.img").stat().st_size == 64


def s3_snippet(after: str, s3: S3Server, prefix: str) -> str:
    """A tape.md S3 configuration with the test server's endpoint, bucket and a prefix of
    its own (the server is shared by the session) for the page's."""
    text = DOC.read_text().split(after, 1)[1]
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block, f"docs/tape.md has no configuration after {after!r}"
    assert "s3://backups/site-a" in block.group(1)
    return (
        block.group(1)
        .replace("s3://backups/site-a", f"s3://{s3.bucket}/{prefix}")
        .replace("http://127.0.0.1:8333", s3.endpoint)
    )


def test_the_s3_examples_make_their_cartridges_in_the_bucket(
    targetd_factory: DaemonFactory, s3_server: S3Server
) -> None:
    prefix = f"docs{os.getpid()}"
    library = targetd_factory(s3_snippet("## Tapes in an S3 bucket", s3_server, prefix))
    listing = library.targetctl("library", "list").stdout
    assert re.search(r"^  0x400  storage +TD0001L6 +0 of 429496729600 bytes", listing, re.M)
    assert library.targetctl("library", "import", "TD0042L6").returncode == 0
    exported = library.targetctl("library", "export", "TD0042L6", "--json")
    assert exported.returncode == 0, exported.stderr
    # operations.md's progress example ends with this result, for the page's bucket.
    image = json.loads(exported.stdout)["image"]
    assert image == f"s3://{s3_server.bucket}/{prefix}/exported/TD0042L6/"
    library.stop()
    tape = targetd_factory(s3_snippet("**A tape LUN of its own**", s3_server, prefix))
    done = subprocess.run(["iscsi-ls", "-s", f"iscsi://{tape.portal}"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert re.search(r"Lun:2\s+Type:SEQUENTIAL_ACCESS", done.stdout), done.stdout
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}/")
    keys = sorted(o["Key"] for o in listed["Contents"])
    assert keys == [f"{prefix}/{name}/tape.json" for name in
                    ("TD0001L6", "TD0002L6", "exported/TD0042L6", "nightly")], keys  # fmt: skip
