"""Consistency groups and declared pairs through a real daemon: ``[[pair]]``/``[[group]]``
in the configuration (created at start and by a reload), a group split by the vendor
command while three sessions write to three LUNs (the images keep every host's write
order), all-or-nothing refusal, and ``targetctl group``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from conftest import REPO, Daemon, DaemonFactory
from group_model import BLOCK, History, Write, check
from pair_scsi import SPLIT, BlockClient, Status, pair_in, pair_out

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd:groups"
SIZE = 4 * MiB


def config(rate: str, luns: int = 6, *, extra: str = "") -> str:
    text = f"""
[pairs]
chunk_size = "64KiB"
copy_rate = "{rate}"

[[target]]
name = "{IQN}"
"""
    for n in range(luns):
        text += f'[[target.lun]]\nlun = {n}\nsize = "{SIZE // MiB}MiB"\n'
    for i in range(3):
        text += f'[[pair]]\nname = "p{i}"\nsource_lun = {i}\ntarget_lun = {i + 3}\n'
    text += '[[group]]\nname = "db"\npairs = ["p0", "p1", "p2"]\n'
    return text + extra


def wait_group(daemon: Daemon, state: str) -> dict[str, Any]:
    done = daemon.targetctl("group", "wait", "db", "--state", state, "--timeout", "60", "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    return json.loads(done.stdout)["status"]


def test_declared_group_splits_as_one_cut_of_three_sessions(
    targetd_factory: DaemonFactory,
) -> None:
    rng = random.Random(int(os.environ.get("GROUP_SEED", "7")))
    initial = [rng.randbytes(SIZE) for _ in range(3)]
    # The primaries hold data before the daemon starts: the creation copy is the backlog.
    daemon = targetd_factory(config("1MiB"), start=False)
    images = daemon.state_dir / IQN.replace(":", "_")
    images.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (images / f"lun{i}.img").write_bytes(initial[i])
    daemon.start()
    group = daemon.targetctl_json("group", "status", "db")
    assert group["pairs"] == ["p0", "p1", "p2"] and group["target"] == IQN
    assert group["state"] == "DUPLEX-PENDING"
    assert [m["group"] for m in group["members"]] == ["db"] * 3

    luns = (0, 1, 2, 3, 4, 5)
    clients = [
        BlockClient(daemon.port, IQN, luns, name=f"iqn.2026-11.org.test:host{s}") for s in range(3)
    ]
    controller = BlockClient(daemon.port, IQN, luns, name="iqn.2026-11.org.test:backup")
    history = History(3)
    lock = threading.Lock()  # the shared clock: one tick at a time
    blocks = SIZE // BLOCK
    split_at = rng.randrange(20, 60)
    started = threading.Barrier(4)

    def tick() -> int:
        with lock:
            return history.tick()

    def session(s: int) -> None:
        started.wait()
        for i in range(120):
            lun = rng.randrange(3)
            block = rng.randrange(blocks // 3) * 3 + s
            w = Write(s, lun, block, bytes([s + 1, i % 251 + 1]) * (BLOCK // 2))
            history.writes[s].append(w)
            w.sent = tick()
            clients[s].write(lun, block * BLOCK, w.data)
            w.acked = tick()

    def splitter() -> None:
        started.wait()
        while sum(len(w) for w in history.writes) < split_at:
            time.sleep(0.001)
        history.split_sent = tick()
        controller.ok(pair_out(SPLIT), lun=1)  # sent to member p1's LUN: the group splits
        history.split_acked = tick()

    threads = [threading.Thread(target=session, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=splitter))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = daemon.targetctl_json("group", "status", "db")
    assert len({m["split_time"] for m in status["members"]}) == 1
    assert sum(m["dirty_chunks"] for m in status["members"]) > 0 or status["state"] == "SPLIT"
    # Read through iSCSI while the reflection may still run: the split image already.
    seen = [controller.read(3 + i, 0, SIZE) for i in range(3)]
    check(history, initial, seen)
    # PAIR IN names the group in bytes 96-127.
    st = Status.parse(controller.ok(pair_in(1, 128), lun=0, read=128))
    assert (st.name, st.group, st.source) == ("p1", "db", "SPLIT")
    done = daemon.targetctl("group", "status", "db")
    assert done.returncode == 0 and "group db:" in done.stdout and "p1" in done.stdout
    for c in (*clients, controller):
        c.close()

    # Resync by the group; then a member in the wrong state fails the whole split.
    resynced = daemon.targetctl_json("group", "resync", "db")
    assert {m["source_state"] for m in resynced["members"]} <= {"RESYNC", "DUPLEX"}
    wait_group(daemon, "DUPLEX")
    # The host tool's split, sent to one member's secondary, splits the group.
    done = subprocess.run(
        [sys.executable, "-m", "hostcopy", "split", daemon.url(5), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["group"] == "db"
    split = wait_group(daemon, "SPLIT")
    assert len({m["split_time"] for m in split["members"]}) == 1
    refused = daemon.targetctl("group", "split", "db")
    assert refused.returncode == 1
    assert "group 'db' not split: pair 'p0': cannot split a pair that is SPLIT/SPLIT" in (
        refused.stderr
    )


def test_a_split_group_refuses_another_split_and_nothing_changes(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = targetd_factory(config("0"))
    wait_group(daemon, "DUPLEX")
    # Membership: a pair taken out splits alone; a split pair cannot join a group.
    client = BlockClient(daemon.port, IQN, (0, 1, 2, 3, 4, 5))
    daemon.targetctl_json("group", "remove", "db", "p1")
    daemon.targetctl_json("pair", "split", "p1")  # alone: p1 is split, the others mirror
    refused = daemon.targetctl("group", "add", "db", "p1")
    assert refused.returncode == 1, refused.stderr  # split: it cannot join
    assert "pair 'p1' is SPLIT-PENDING" in refused.stderr or "is SPLIT:" in refused.stderr
    daemon.targetctl_json("pair", "resync", "p1")
    daemon.targetctl_json("group", "add", "db", "p1")
    wait_group(daemon, "DUPLEX")
    daemon.targetctl_json("pair", "split", "p0")
    wait_group(daemon, "SPLIT")
    before = daemon.targetctl_json("group", "status", "db")
    # Every member is SPLIT: the vendor SPLIT is refused with the state of the pair, and
    # no member changed.
    status, _, sense = client.run(pair_out(SPLIT), lun=2)
    assert (status, sense) == (2, (0x5, 0x80, 0x02))
    after = daemon.targetctl_json("group", "status", "db")
    key = [(m["name"], m["source_state"], m["target_state"], m["split_time"])
           for m in before["members"]]  # fmt: skip
    assert key == [(m["name"], m["source_state"], m["target_state"], m["split_time"])
                   for m in after["members"]]  # fmt: skip
    client.close()


def test_reload_adds_declared_pairs_and_reports_mismatches(
    targetd_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = targetd_factory(config("0", luns=6))
    wait_group(daemon, "DUPLEX")
    assert daemon.config is not None
    text = config("0", luns=8, extra='[[pair]]\nname = "p3"\nsource_lun = 6\ntarget_lun = 7\n')
    daemon.config.write_text(text)
    os.kill(daemon.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while "p3" not in daemon.stderr and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "pair[3] 'p3': created, LUN 6 -> LUN 7" in daemon.stderr, daemon.stderr
    assert daemon.targetctl_json("pair", "status", "p3")["target_lun"] == 7
    # p3 and the group are taken out of the file, and p0 is declared onto other LUNs: all
    # reported, nothing changed.
    text = config("0", luns=8).replace("target_lun = 3", "target_lun = 7")
    text = text.replace('[[group]]\nname = "db"\npairs = ["p0", "p1", "p2"]\n', "")
    daemon.config.write_text(text)
    os.kill(daemon.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while "no longer declared" not in daemon.stderr and time.monotonic() < deadline:
        time.sleep(0.05)
    log = daemon.stderr
    assert "pair 'p3' is no longer declared: left as it is" in log, log
    assert "group 'db' is no longer declared: left as it is" in log, log
    assert "pair[0] 'p0': declared LUN 0 -> LUN 7, but the existing pair is" in log, log
    assert daemon.targetctl_json("pair", "status", "p0")["target_lun"] == 3
    assert daemon.targetctl_json("pair", "status", "p3")["target_lun"] == 7
    # After a restart the pairs and the group are back as they were (not created anew).
    daemon.restart()
    group = daemon.targetctl_json("group", "status", "db")
    assert group["pairs"] == ["p0", "p1", "p2"]
    # At start, a declared group whose members differ from the existing one's: reported,
    # left as it is.
    daemon.stop()
    daemon.config.write_text(config("0", luns=8).replace('"p1", "p2"]', '"p1"]'))
    daemon.start()
    assert (
        "group[0] 'db': declared with pairs p0, p1, but the existing group has p0, p1, p2; "
        "left as it is (targetctl group add/remove changes it)"
    ) in daemon.stderr, daemon.stderr
    assert daemon.targetctl_json("group", "status", "db")["pairs"] == ["p0", "p1", "p2"]


def test_a_reload_resumes_the_pair_file_of_luns_it_adds(targetd_factory: DaemonFactory) -> None:
    """A pair whose LUN was left out of the file at a restart is not lost: the reload
    that brings the LUN back resumes the pair from its file (not a new one)."""
    two = f'[[target]]\nname = "{IQN}"\n' + "".join(
        f'[[target.lun]]\nlun = {n}\nsize = "4MiB"\n' for n in range(2)
    )
    daemon = targetd_factory(two)
    created = daemon.targetctl_json("pair", "create", "keep", "0", "1")
    assert created["target_lun"] == 1
    daemon.targetctl_json("pair", "split", "keep")
    split_time = daemon.targetctl_json("pair", "status", "keep")["split_time"]
    daemon.stop()
    assert daemon.config is not None
    daemon.config.write_text(two.split("[[target.lun]]\nlun = 1")[0])
    daemon.start()
    assert "pair keep: its volumes are not configured; left as is" in daemon.stderr
    assert daemon.targetctl_json("pair", "status") == []
    daemon.config.write_text(two)
    os.kill(daemon.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pairs = daemon.targetctl_json("pair", "status")
        if pairs:
            break
        time.sleep(0.1)
    assert [(p["name"], p["source_state"], p["split_time"]) for p in pairs] == [
        ("keep", "SPLIT", split_time)
    ]


def test_reverse_resync_of_a_group_restores_every_source(
    targetd_factory: DaemonFactory,
) -> None:
    """PAIR OUT REVERSE RESYNC (06h) sent to one member's LUN restores every source of the
    group from its mirror; the sources refuse writes (DATA PROTECT) until DUPLEX and read
    the restored image at once; then the host tool and targetctl restore too."""
    daemon = targetd_factory(config("256KiB"))
    wait_group(daemon, "DUPLEX")
    client = BlockClient(daemon.port, IQN, (0, 1, 2, 3, 4, 5))
    for lun in range(3):
        client.write(lun, 0, bytes([lun + 1]) * MiB)
    wait_group(daemon, "DUPLEX")
    daemon.targetctl_json("group", "split", "db")
    split = wait_group(daemon, "SPLIT")
    assert {m["target_state"] for m in split["members"]} == {"SPLIT"}
    for lun in range(3):  # the database goes wrong after the split
        client.write(lun, 0, b"\xee" * MiB)
    client.ok(pair_out(6), lun=0)  # REVERSE RESYNC of the group, through LUN 0
    st = Status.parse(client.ok(pair_in(0, 128), lun=0, read=128))
    assert (st.source, st.target, st.group) == ("REVERSE-COPY", "REVERSE-COPY", "db")
    # Fenced: a write to a source is refused with DATA PROTECT / WRITE PROTECTED.
    status, _, sense = client.run(
        bytes([0x8A, 0]) + (0).to_bytes(8, "big") + (8).to_bytes(4, "big") + bytes(2),
        lun=1,
        data=bytes(4096),
    )
    assert (status, sense) == (2, (0x7, 0x27, 0x00))
    assert client.read(1, 0, MiB) == bytes([2]) * MiB  # the restored image already
    wait_group(daemon, "DUPLEX")
    for lun in range(3):
        assert client.read(lun, 0, MiB) == bytes([lun + 1]) * MiB
    # A second time, by the host tool, then by targetctl.
    daemon.targetctl_json("group", "split", "db")
    wait_group(daemon, "SPLIT")
    client.write(2, 0, b"\xdd" * 65536)
    done = subprocess.run(
        [sys.executable, "-m", "hostcopy", "resync", "--reverse", daemon.url(5), "--wait"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert client.read(2, 0, 65536) == bytes([3]) * 65536
    wait_group(daemon, "DUPLEX")
    refused = daemon.targetctl("group", "restore", "db")  # DUPLEX: nothing to restore from
    assert refused.returncode == 1 and "not restored" in refused.stderr
    daemon.targetctl_json("group", "split", "db")
    wait_group(daemon, "SPLIT")
    restored = daemon.targetctl_json("pair", "restore", "p0")  # a member: the whole group
    assert restored["group"] == "db"
    assert restored["source_state"] in ("REVERSE-COPY", "DUPLEX")
    wait_group(daemon, "DUPLEX")
    client.close()
