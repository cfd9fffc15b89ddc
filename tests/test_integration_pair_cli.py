"""``targetctl pair ...`` as an operator runs it: real targetctl subprocesses against a running
daemon, found by its --state-dir; the JSON shapes, the table, wait with a timeout, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

from conftest import REPO, Daemon, DaemonFactory, free_port
from pair_scsi import BlockClient, pair_config

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd:paircli"
STATUS_KEYS = {
    "name", "source", "target", "source_lun", "target_lun", "source_state", "target_state",
    "reason", "size", "chunk_size", "chunks", "dirty_chunks", "changed_chunks",
    "percent_in_sync", "copy_rate", "copied_bytes", "split_time", "backup_policy",
    "backup_policy_set", "error", "group",
}  # fmt: skip


def start(factory: DaemonFactory, rate: str) -> Daemon:
    return factory(pair_config(IQN, rate))


def test_pair_life_cycle_through_targetctl(targetd_factory: DaemonFactory) -> None:
    daemon = start(targetd_factory, "0")
    client = BlockClient(daemon.port, IQN)
    client.write(0, 0, b"\xa5" * MiB)

    created = daemon.targetctl_json("pair", "create", "db", "0", "1")
    assert set(created) == STATUS_KEYS
    assert (created["name"], created["source_lun"], created["target_lun"]) == ("db", 0, 1)
    assert created["source"] == f"{IQN}/lun0" and created["target"] == f"{IQN}/lun1"
    assert (created["chunk_size"], created["chunks"], created["size"]) == (65536, 128, 8 * MiB)
    assert created["source_state"] in ("DUPLEX-PENDING", "DUPLEX")

    waited = daemon.targetctl_json("pair", "wait", "db", "--state", "duplex", "--timeout", "30")
    assert waited["reached"] is True
    assert (waited["status"]["source_state"], waited["status"]["target_state"]) == (
        "DUPLEX",
        "DUPLEX",
    )
    assert waited["status"]["dirty_chunks"] == 0 and waited["status"]["percent_in_sync"] == 100

    split = daemon.targetctl("pair", "split", "db")
    assert split.returncode == 0, split.stderr
    assert split.stdout.startswith("pair db split: source SPLIT, target SPLIT")
    done = daemon.targetctl("pair", "wait", "db", "--state", "SPLIT", "--timeout", "30")
    assert (done.returncode, done.stdout) == (0, "pair db: SPLIT/SPLIT\n")
    client.write(0, 0, b"\x5a" * 4096)  # a change since the split: the resync backlog

    one = daemon.targetctl_json("pair", "status", "db")
    assert set(one) == STATUS_KEYS
    assert (one["source_state"], one["target_state"], one["changed_chunks"]) == (
        "SPLIT",
        "SPLIT",
        1,
    )
    assert one["split_time"] > time.time() - 60
    listing = daemon.targetctl_json("pair", "status")
    assert listing == [listing[0]] and listing[0]["name"] == "db"

    table = daemon.targetctl("pair", "status")
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "NAME", "SRC", "TGT", "SOURCE", "TARGET", "SYNC%", "DIRTY", "CHANGED", "MiB/s", "POLICY",
        "REASON",
    ]  # fmt: skip
    assert lines[1].split()[:8] == ["db", "0", "1", "SPLIT", "SPLIT", "99.22", "0", "1"]

    resynced = daemon.targetctl_json("pair", "resync", "db")
    assert resynced["source_state"] in ("RESYNC", "DUPLEX")
    assert daemon.targetctl_json("pair", "wait", "db", "--state", "DUPLEX")["reached"] is True
    assert client.read(1, 0, MiB) == b"\x5a" * 4096 + b"\xa5" * (MiB - 4096)

    assert daemon.targetctl_json("pair", "delete", "db") == {"deleted": "db"}
    assert daemon.targetctl_json("pair", "status") == []
    assert daemon.targetctl("pair", "status").stdout == "no pairs\n"
    # Both volumes of a deleted pair are SIMPLEX: waiting for that returns at once.
    gone = daemon.targetctl_json("pair", "wait", "db", "--state", "SIMPLEX", "--timeout", "1")
    assert gone == {"reached": True, "status": None}
    client.close()


def test_wait_times_out_with_status_3(targetd_factory: DaemonFactory) -> None:
    daemon = start(targetd_factory, "256KiB")  # 8 MiB at 256 KiB/s: half a minute of copying
    client = BlockClient(daemon.port, IQN)
    client.write(0, 0, b"\x01" * (8 * MiB))
    client.close()
    created = daemon.targetctl("pair", "create", "slow", "0", "1")
    assert created.returncode == 0, created.stderr
    assert created.stdout == (
        "pair slow: LUN 0 -> LUN 1, DUPLEX-PENDING/DUPLEX-PENDING, 128 of 128 chunks to copy\n"
    )
    t = time.monotonic()
    done = daemon.targetctl("pair", "wait", "slow", "--state", "DUPLEX", "--timeout", "0.5")
    elapsed = time.monotonic() - t
    assert done.returncode == 3, done.stderr
    assert "timed out after 0.5 s; pair slow is DUPLEX-PENDING/DUPLEX-PENDING" in done.stderr
    assert done.stdout == ""  # not a terminal: no progress bar
    assert elapsed < 5
    as_json = daemon.targetctl(
        "pair", "wait", "slow", "--state", "SPLIT", "--timeout", "0.2", "--json"
    )
    assert as_json.returncode == 3
    result = json.loads(as_json.stdout)
    assert result["reached"] is False and set(result["status"]) == STATUS_KEYS
    assert 0 < result["status"]["dirty_chunks"] <= 128


def test_refusals_exit_1_with_the_reason(targetd_factory: DaemonFactory) -> None:
    daemon = start(targetd_factory, "0")

    def refused(*args: str) -> str:
        done = daemon.targetctl(*args)
        assert done.returncode == 1 and done.stdout == "", (done.stdout, done.stderr)
        return done.stderr

    assert "pair.split: no pair named 'nope'" in refused("pair", "split", "nope")
    assert "sizes differ" in refused("pair", "create", "p", "0", "2")
    assert (
        refused("pair", "create", "p", "0", "7")
        == f"targetctl: pair.create: target {IQN} has no LUN 7\n"
    )
    assert "bad pair name" in refused("pair", "create", "a b", "0", "1")
    assert "no target named" in refused("pair", "create", "p", "0", "1", "--target", "iqn.x:y")
    assert daemon.targetctl("pair", "create", "p", "0", "1").returncode == 0
    assert "is in pair p" in refused("pair", "create", "q", "2", "1")
    assert "cannot resync a pair that is" in refused("pair", "resync", "p")
    bad_state = daemon.targetctl("pair", "wait", "p", "--state", "MIRRORED")
    assert bad_state.returncode == 1 and "unknown state 'MIRRORED'" in bad_state.stderr
    usage = daemon.targetctl("pair", "create", "p", "zero", "1")
    assert usage.returncode == 2  # argparse: not a LUN number


def test_no_daemon_says_where_it_looked(tmp_path: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "targetd.ctl", "pair", "status", "--state-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert f"no daemon listening on {tmp_path}/admin.sock" in done.stderr


def test_pair_metrics_follow_the_pair(targetd_factory: DaemonFactory) -> None:
    port = free_port()
    daemon = targetd_factory(
        pair_config(IQN, "256KiB") + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    client = BlockClient(daemon.port, IQN)
    client.write(0, 0, b"\x07" * (4 * MiB))
    client.close()
    assert daemon.targetctl("pair", "create", "m", "0", "1").returncode == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    sample = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("targetd_pair_")
    )
    pair = f'pair="m",target="{IQN}"'
    state = 'targetd_pair_state{%s,side="%s",state="DUPLEX-PENDING"}'
    assert sample[state % (pair, "source")] == sample[state % (pair, "target")] == "1"
    dirty = int(sample[f"targetd_pair_dirty_chunks{{{pair}}}"])
    assert 0 < dirty <= 64  # 4 MiB of data in 64 KiB chunks, copying at 256 KiB/s
    assert int(sample[f"targetd_pair_backlog_bytes{{{pair}}}"]) == dirty * 65536
    assert sample[f"targetd_pair_changed_chunks{{{pair}}}"] == "0"
    assert "# TYPE targetd_pair_copied_bytes_total counter" in text


def test_a_pair_of_a_tape_is_refused_in_words(targetd: Daemon) -> None:
    """The default configuration's LUN 2 is a tape: said so, not "no volume '.../lun2'"."""
    done = targetd.targetctl("pair", "create", "db", "0", "2")
    assert done.returncode == 1
    assert done.stderr == (
        f"targetctl: pair.create: LUN 2 of {targetd.iqn} is a tape: a pair mirrors block volumes\n"
    )
