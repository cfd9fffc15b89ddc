"""The ``targetctl pair`` and ``targetctl group`` examples of docs/pairs.md (and its PAIR OUT
sg_raw lines, sent as the CDBs they spell), taken from the page
and run line by line, exactly as written, by a shell against a daemon this test starts: each
line must exit 0 (a line that only works in another order, or names a command that does not
exist, fails here). The pair table's header must be the page's."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO, DaemonFactory
from pair_scsi import BlockClient

DOC = REPO / "docs" / "pairs.md"
IQN = "iqn.2026-11.org.targetd:docs"
# LUN 0 -> 1 is the page's "db"; the group's pairs db-data, db-log and db-tmp are made here.
GROUP_PAIRS = {"db-data": (2, 3), "db-log": (4, 5), "db-tmp": (6, 7)}
LUNS = "".join(f'[[target.lun]]\nlun = {lun}\nsize = "4MiB"\n' for lun in range(8))
CONFIG = f'[pairs]\nchunk_size = "64KiB"\n\n[[target]]\nname = "{IQN}"\n{LUNS}'


def sh_block(first_line: str) -> list[str]:
    """The command lines of the page's ```sh block that starts with ``first_line``."""
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S):
        lines = [line for line in block.splitlines() if line.strip()]
        if lines[0].startswith(first_line):
            return lines
    raise AssertionError(f"docs/pairs.md has no sh block starting {first_line!r}")


def table_header() -> str:
    shown = re.search(r"^NAME +SRC .*$", DOC.read_text(), re.M)
    assert shown, "docs/pairs.md shows no pair table"
    return shown.group(0)


def user_shell(tmp: Path, state_dir: Path) -> tuple[dict[str, str], Path]:
    """The environment of a user with ``targetctl`` on PATH and the daemon's state dir."""
    bindir = tmp / "bin"
    bindir.mkdir()
    shim = bindir / "targetctl"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m targetd.ctl "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ)
    env.update(
        PATH=f"{bindir}:{env['PATH']}",
        PYTHONPATH=str(REPO),
        TARGETD_STATE_DIR=str(state_dir),
    )
    return env, tmp


def run_lines(lines: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    outputs = []
    for line in lines:
        done = subprocess.run(
            ["bash", "-c", line], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
        )
        said = done.stdout + done.stderr
        assert done.returncode == 0, f"{line!r} exited {done.returncode}:\n{said}"
        outputs.append(done.stdout)
    return outputs


def test_the_targetctl_pair_and_group_examples_run_as_written(
    targetd_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = targetd_factory(CONFIG)
    env, cwd = user_shell(tmp_path, daemon.state_dir)

    pair_lines = sh_block("targetctl pair create db 0 1")
    outputs = run_lines(pair_lines, env, cwd)
    table = outputs[next(i for i, line in enumerate(pair_lines) if "a table" in line)]
    assert table.splitlines()[0].split() == table_header().split()
    # `status db --json`: the keys of the page's pair status object, no more, no fewer.
    shown = re.search(r"```json\n(\{\"name\": \"db\".*?)```", DOC.read_text(), re.S)
    assert shown, "docs/pairs.md shows no pair status object"
    said = outputs[next(i for i, line in enumerate(pair_lines) if "--json" in line)]
    assert sorted(json.loads(said)) == sorted(json.loads(shown.group(1)))

    for name, (source, target) in GROUP_PAIRS.items():
        assert daemon.targetctl("pair", "create", name, str(source), str(target)).returncode == 0
        done = daemon.targetctl("pair", "wait", name, "--state", "DUPLEX", "--timeout", "30")
        assert done.returncode == 0, done.stderr
    run_lines(sh_block("targetctl group create db db-data db-log"), env, cwd)
    # The last line deleted the group and left its pairs as they were.
    assert daemon.targetctl("group", "status", "db").returncode != 0
    for name in GROUP_PAIRS:
        assert daemon.targetctl_json("pair", "status", name)["group"] is None


def test_the_pair_in_example_reads_the_whole_status(targetd_factory: DaemonFactory) -> None:
    """The page's PAIR IN line asks for as many bytes as its CDB allows, and that is all of
    the status data the table describes (bytes 0-135, the secondaries' LUNs included)."""
    line = next(
        line
        for line in DOC.read_text().splitlines()
        if line.startswith("sg_raw -r ") and " c5 " in line
    )
    words = shlex.split(line)
    length, cdb = int(words[2]), bytes(int(w, 16) for w in words[4:])
    assert int.from_bytes(cdb[10:14], "big") == length
    daemon = targetd_factory(CONFIG)
    assert daemon.targetctl("pair", "create", "db", "0", "1").returncode == 0
    client = BlockClient(daemon.port, IQN)
    try:
        status = client.ok(cdb, lun=0, read=length)
    finally:
        client.close()
    assert len(status) == length == int.from_bytes(status[0:2], "big") + 2
    assert (status[128], status[130:136]) == (1, bytes([0, 1, 0xFF, 0xFF, 0xFF, 0xFF]))


def pair_out_lines() -> dict[str, tuple[int, bytes, bytes]]:
    """The page's PAIR OUT sg_raw lines by their comment: (LUN, CDB, data out). /dev/sdb is
    LUN 0, /dev/sdc another LUN (2 here); ``printf X > FILE && sg_raw -s N -i FILE`` sends X."""
    lines = sh_block("# create: source LUN 0")
    found: dict[str, tuple[int, bytes, bytes]] = {}
    comment = ""
    for line in lines:
        if line.startswith("#"):
            comment, n = line[2:], 0
            continue
        data = b""
        if line.startswith("printf "):
            printed, line = line.split(" && ", 1)
            data = shlex.split(printed)[1].encode()
        words = shlex.split(line)[1:]
        if words[0] == "-s":
            assert int(words[1]) == len(data), line
            words = words[4:]
        lun = {"/dev/sdb": 0, "/dev/sdc": 2}[words[0]]
        n += 1
        found[f"{comment} #{n}"] = (lun, bytes(int(w, 16) for w in words[1:]), data)
    return found


def test_the_pair_out_examples_do_what_their_comments_say(
    targetd_factory: DaemonFactory,
) -> None:
    """Each PAIR OUT line of the page, sent in an order where each one's comment holds, is
    answered GOOD and leaves what the comment says."""
    lines = pair_out_lines()
    assert len(lines) == 12, list(lines)
    daemon = targetd_factory(CONFIG)
    client = BlockClient(daemon.port, IQN, (0, 1, 2))

    def send(start: str, n: int = 1) -> None:
        (key,) = [k for k in lines if k.startswith(start) and k.endswith(f" #{n}")]
        lun, cdb, data = lines[key]
        client.ok(cdb, lun=lun, data=data)

    def state(name: str) -> dict[str, Any]:
        return dict(daemon.targetctl_json("pair", "status", name))

    def wait(name: str, reached: str) -> None:
        done = daemon.targetctl("pair", "wait", name, "--state", reached, "--timeout", "30")
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        send("create: source LUN 0, target LUN 1")
        wait("db", "DUPLEX")
        send("the pair /dev/sdb is in joins group")
        assert state("db")["group"] == "db"
        send("the pair /dev/sdb is in joins group", 2)
        assert state("db")["group"] is None
        send("SET BACKUP POLICY")
        assert (state("db")["backup_policy"], state("db")["backup_policy_set"]) == ("wait", True)
        send("SET BACKUP POLICY", 2)
        assert state("db")["backup_policy_set"] is False
        send("split / resync / delete")
        wait("db", "SPLIT")
        send("split / resync / delete", 2)
        wait("db", "DUPLEX")
        send("split the pair LUN 1 is in")
        wait("db", "SPLIT")
        send("reverse resync")
        wait("db", "DUPLEX")
        send("split / resync / delete", 3)
        assert daemon.targetctl_json("pair", "status") == []
        send("create, default name")
        assert (state("lun0-lun1")["source_lun"], state("lun0-lun1")["target_lun"]) == (0, 1)
        send("split / resync / delete", 3)
        send("create LUN 0 -> LUN 1 with backup policy 03h")
        (made,) = daemon.targetctl_json("pair", "status")
        assert (made["backup_policy"], made["backup_policy_set"]) == ("merge", True)
    finally:
        client.close()
