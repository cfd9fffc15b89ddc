"""A pair whose copy meets a failing disk goes SUSPENDED with the reason, and says so: a
real daemon over faultfs (tests/powercut), EIO injected on the target volume's file. The
daemon keeps serving, the operator sees the reason and the error, and a resync after the
fault is gone brings the pair back to DUPLEX with the source's bytes. A consistency group
with such a member refuses to split, whole, and no member changes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import targetd_copy
from conftest import DaemonFactory
from pair_scsi import SPLIT, BlockClient, pair_out
from powercut.harness import FaultFS, mounted

MiB = 1 << 20
IQN = "iqn.2026-11.org.targetd.test:pair-faults"
CONFIG = (
    '[pairs]\nchunk_size = "64KiB"\ncopy_rate = "1MiB"\n'
    f'[[target]]\nname = "{IQN}"\n'
    '[[target.lun]]\nlun = 0\npath = "lun0.img"\nsize = "8MiB"\n'
    '[[target.lun]]\nlun = 1\npath = "lun1.img"\nsize = "8MiB"\n'
)


@pytest.fixture
def faultfs(tmp_path: Path) -> Iterator[FaultFS]:
    with mounted(tmp_path / "faultfs") as fs:
        yield fs


@pytest.mark.parametrize("when", ["set-up", "copy"])
def test_eio_on_the_target_suspends_the_pair_with_its_reason(
    targetd_factory: DaemonFactory, faultfs: FaultFS, when: str
) -> None:
    daemon = targetd_factory(CONFIG, state_dir=faultfs.mountpoint)
    client = BlockClient(daemon.port, IQN)
    client.write(0, 0, os.urandom(2 * MiB))
    client.close()  # a session left idle through the waits below would get NOP-Ins
    if when == "set-up":  # the creation's deallocation of the whole target fails
        faultfs.fault("write", "lun1.img", MiB, 2 * MiB)
    assert daemon.targetctl("pair", "create", "db", "0", "1").returncode == 0
    if when == "copy":  # copying at 1 MiB/s, writes to the target fail from 1 MiB on
        faultfs.fault("write", "lun1.img", MiB, 8 * MiB)
    waited = daemon.targetctl("pair", "wait", "db", "--state", "DUPLEX", "--timeout", "30")
    assert waited.returncode == 4, waited.stderr  # SUSPENDED: waiting longer cannot help
    assert "pair db is SUSPENDED (TARGET_WRITE_ERROR)" in waited.stderr
    status = json.loads(daemon.targetctl("pair", "status", "db", "--json").stdout)
    assert (status["source_state"], status["reason"]) == ("SUSPENDED", "TARGET_WRITE_ERROR")
    assert status["error"].startswith("MediumWriteError: [Errno 5] write of ")
    assert "lun1.img" in status["error"] and status["error"].endswith("failed: EIO")
    table = daemon.targetctl("pair", "status").stdout
    assert "TARGET_WRITE_ERROR: MediumWriteError" in table
    log = daemon.stderr
    assert "pair db: SUSPENDED (TARGET_WRITE_ERROR): MediumWriteError" in log
    if when == "copy":
        failed = re.search(r"pair db: copying chunk (\d+) failed", log)
        assert failed is not None and int(failed.group(1)) >= 16, log
        assert "Traceback" in log
    # The daemon keeps serving both LUNs (the suspended target is writable, as after a split).
    client = BlockClient(daemon.port, IQN)
    client.write(0, 4 * MiB, b"\x01" * 4096)
    client.write(1, MiB // 2, b"\x02" * 4096)  # outside the failing range
    assert client.read(1, MiB // 2, 4096) == b"\x02" * 4096
    client.close()
    # The disk is back: a resync copies what the target lacks, and its own changes.
    faultfs.clear_faults()
    assert daemon.targetctl("pair", "resync", "db").returncode == 0
    waited = daemon.targetctl("pair", "wait", "db", "--state", "DUPLEX", "--timeout", "90")
    assert waited.returncode == 0, waited.stderr
    client = BlockClient(daemon.port, IQN)
    assert client.read(1, 0, 8 * MiB) == client.read(0, 0, 8 * MiB)
    assert json.loads(daemon.targetctl("pair", "status", "db", "--json").stdout)["error"] is None
    client.close()
    assert daemon.stop() == 0  # before faultfs goes away


GROUP_CONFIG = CONFIG + "".join(
    f'[[target.lun]]\nlun = {n}\npath = "lun{n}.img"\nsize = "8MiB"\n' for n in (2, 3)
)


def test_a_group_with_a_suspended_member_refuses_the_whole_split(
    targetd_factory: DaemonFactory, faultfs: FaultFS
) -> None:
    """Group db: p0 (LUN 0 -> 1) mirroring, p1 (LUN 2 -> 3) SUSPENDED by a failing disk.
    A split of the group, by the vendor command to p0's mirror, by targetd-copy and by
    targetctl, is refused (PAIR WRONG STATE) and changes no member: p0 goes on mirroring."""
    daemon = targetd_factory(GROUP_CONFIG, state_dir=faultfs.mountpoint)
    client = BlockClient(daemon.port, IQN, (0, 1, 2, 3))
    try:
        client.write(0, 0, os.urandom(2 * MiB))
        client.write(2, 0, os.urandom(2 * MiB))
        assert daemon.targetctl("pair", "create", "p0", "0", "1").returncode == 0
        faultfs.fault("write", "lun3.img", MiB, 8 * MiB)
        assert daemon.targetctl("pair", "create", "p1", "2", "3").returncode == 0
        waited = daemon.targetctl("pair", "wait", "p1", "--state", "DUPLEX", "--timeout", "30")
        assert waited.returncode == 4, waited.stderr  # SUSPENDED
        # p0's first copy done, so that no state moves under the comparison below.
        waited = daemon.targetctl("pair", "wait", "p0", "--state", "DUPLEX", "--timeout", "60")
        assert waited.returncode == 0, waited.stderr
        daemon.targetctl_json("group", "create", "db", "p0", "p1")
        key = ("name", "source_state", "target_state", "split_time")

        def members() -> list[tuple[object, ...]]:
            status = daemon.targetctl_json("group", "status", "db")
            return [tuple(m[k] for k in key) for m in status["members"]]

        before = members()
        assert [m[1] for m in before] == ["DUPLEX", "SUSPENDED"], before
        status, _, sense = client.run(pair_out(SPLIT), lun=1)
        assert (status, sense) == (2, (0x5, 0x80, 0x02))
        proc = targetd_copy("split", daemon.url(1), check=False)
        assert proc.returncode == 1
        assert "PAIR OUT SPLIT: ILLEGAL REQUEST, PAIR WRONG STATE (05/80/02)" in proc.stderr
        refused = daemon.targetctl("group", "split", "db")
        assert refused.returncode == 1 and "'p1'" in refused.stderr, refused.stderr
        assert members() == before
        # p0 still mirrors: a write to its source reaches its mirror.
        client.write(0, 3 * MiB, b"\x07" * 65536)
        waited = daemon.targetctl("pair", "wait", "p0", "--state", "DUPLEX", "--timeout", "60")
        assert waited.returncode == 0, waited.stderr
        assert client.read(1, 3 * MiB, 65536) == b"\x07" * 65536
    finally:
        client.close()
    faultfs.clear_faults()
    assert daemon.stop() == 0  # before faultfs goes away
