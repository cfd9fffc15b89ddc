"""docs/tape.md's `targetctl tape` block, run line by line as written from a directory whose
``var/targetd`` is the daemon's state directory (as in a checkout running scripts/serve.sh),
after the tape the page lists was written through the tape LU: the listing must be the
page's, character for character."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, DaemonFactory
from raw_initiator import RawInitiator

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
