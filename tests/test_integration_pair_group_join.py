"""Consistency group membership from the host: PAIR OUT 07h GROUP JOIN and 08h GROUP LEAVE
through a real daemon, their exact sense for bad input, and targetd-copy's ``join``,
``leave`` and ``create --group`` (docs/pairs.md, docs/backup.md)."""

from __future__ import annotations

import json
import subprocess
import sys

from clients import targetd_copy as tool
from conftest import REPO, DaemonFactory
from pair_scsi import SPLIT, BlockClient, pair_in, pair_out

IQN = "iqn.2026-11.org.targetd:groupjoin"
JOIN, LEAVE = 0x07, 0x08
CONFIG = f"""
[pairs]
chunk_size = "64KiB"
copy_rate = "0"

[[target]]
name = "{IQN}"
""" + "".join(f'[[target.lun]]\nlun = {n}\nsize = "4MiB"\n' for n in range(7))
INVALID_CDB = (0x5, 0x24, 0x00)
INVALID_PARAMETER = (0x5, 0x26, 0x00)
LENGTH_ERROR = (0x5, 0x1A, 0x00)


def group_of(client: BlockClient, lun: int) -> str:
    """The GROUP NAME of PAIR IN (bytes 96-127)."""
    data = client.ok(pair_in(lun, 128), read=128)
    return data[96:128].rstrip(b"\0").decode()


def join(client: BlockClient, name: bytes, lun: int = 0xFFFF, *, via: int = 0) -> tuple:
    status, _, sense = client.run(pair_out(JOIN, lun, 0, len(name)), lun=via, data=name)
    return status, sense


def test_group_join_and_leave_by_vendor_command(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    client = BlockClient(daemon.port, IQN, tuple(range(7)))
    try:
        client.create(0, 1, b"data")
        client.create(2, 3, b"log")
        client.create(4, 5, b"tmp")
        # Made by the first JOIN (sent to the mirror, FFFFh: the addressed LUN), joined
        # by the second (naming LUN 2 while sent to LUN 6, a LUN in no pair).
        assert join(client, b"db", via=1) == (0, None)
        assert join(client, b"db", 2, via=6) == (0, None)
        assert (group_of(client, 0), group_of(client, 3), group_of(client, 4)) == ("db", "db", "")
        assert join(client, b"db", 0) == (0, None)  # already a member: nothing changes
        # Bad input, each with its own sense, and nothing changes.
        assert join(client, b"", 4) == (2, INVALID_CDB)  # a group needs a name
        assert join(client, b"x" * 33, 4) == (2, INVALID_CDB)  # longer than 32
        assert join(client, b"d b", 4) == (2, INVALID_PARAMETER)
        status, _, sense = client.run(pair_out(JOIN, 4, 0, 8), data=b"db")  # 2 of 8 bytes
        assert (status, sense) == (2, LENGTH_ERROR)
        assert join(client, b"db", 6) == (2, (0x5, 0x80, 0x01))  # LUN 6 is in no pair
        assert join(client, b"other", 0) == (2, (0x5, 0x80, 0x08))  # in group db already
        assert join(client, b"db", 9) == (2, INVALID_CDB)  # no such LUN
        bad = bytearray(pair_out(JOIN, 4, 0, 2))
        bad[7] = 1  # a reserved byte
        assert client.run(bytes(bad), data=b"db")[::2] == (2, INVALID_CDB)
        assert group_of(client, 4) == ""
        # The group splits as one; a split group takes no new pair, nor does a split
        # pair join another group (PAIR WRONG STATE, the pair's states in INFORMATION).
        client.ok(pair_out(SPLIT), lun=3)
        assert client.status(0).split_ms == client.status(2).split_ms != 0
        assert join(client, b"db", 4) == (2, (0x5, 0x80, 0x02))
        client.ok(pair_out(LEAVE), lun=0)  # a split pair may leave
        assert join(client, b"solo", 0) == (2, (0x5, 0x80, 0x02))
        # The last pair to leave takes the group with it.
        client.ok(pair_out(LEAVE), lun=2)
        assert (group_of(client, 0), group_of(client, 2)) == ("", "")
        listed = subprocess.run(
            [sys.executable, "-m", "targetd.ctl", "group", "status", "--json",
             "--state-dir", str(daemon.state_dir)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        client.ok(pair_out(LEAVE), lun=4)  # in no group: nothing to do, GOOD
        status, _, sense = client.run(pair_out(LEAVE), lun=6)  # in no pair
        assert (status, sense) == (2, (0x5, 0x80, 0x01))
    finally:
        client.close()


def test_targetd_copy_makes_and_leaves_groups(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(CONFIG)
    url = daemon.url
    out = tool("create", url(0), url(1), "--name", "data", "--group", "db", "--json").stdout
    assert json.loads(out)["group"] == "db"
    tool("create", url(2), url(3), "--name", "log")
    out = tool("join", url(3), "db", "--json").stdout
    assert json.loads(out)["group"] == "db"
    refused = tool("join", url(1), "other", check=False)
    assert refused.returncode == 1
    assert "ILLEGAL REQUEST, PAIR ALREADY IN GROUP (05/80/08)" in refused.stderr, refused.stderr
    tool("split", url(1))  # the group: both pairs, one instant
    st = [json.loads(tool("status", url(n), "--json").stdout) for n in (1, 3)]
    assert st[0]["split_ms"] == st[1]["split_ms"] != 0
    out = tool("leave", url(3), "--json").stdout
    assert json.loads(out)["group"] == ""
    # delete says what it deleted (it printed nothing); the pair in the group leaves it.
    out = tool("delete", url(1)).stdout
    assert out == (
        "pair data deleted: LUN 0 and LUN 1 are in no pair (SIMPLEX); each keeps its data; "
        "it left group db\n"
    )
    assert tool("status", url(1)).stdout.startswith("LUN 1: in no pair (SIMPLEX)")
    out = tool("delete", url(3), "--json").stdout
    assert json.loads(out) == {"deleted": "log", "source_lun": 2, "target_lun": 3, "group": ""}
    refused = tool("delete", url(3), check=False)
    assert refused.returncode == 1 and "(05/80/01)" in refused.stderr, refused.stderr
