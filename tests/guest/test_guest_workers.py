"""The Linux kernel's initiator (open-iscsi) against a portal with two worker processes:
it follows the login redirect to each target's worker (docs/workers.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from conftest import REPO, DaemonFactory
from guest_vm import GUEST_DIR, run_guest, start_for_guest

FIRST = "iqn.2026-11.org.targetd:default"
SECOND = "iqn.2026-11.org.targetd:second"
TARGETS = f"""\
[server]
workers = 2

[[target]]
name = "{FIRST}"
[[target.lun]]
lun = 0
size = "64MiB"

[[target]]
name = "{SECOND}"
[[target.lun]]
lun = 0
path = "second-lun0.img"
size = "64MiB"
"""


def test_guest_logs_in_to_two_targets_through_their_workers(
    targetd_factory: DaemonFactory,
) -> None:
    daemon = start_for_guest(targetd_factory, TARGETS)

    def status() -> dict:
        return json.loads(
            subprocess.run(
                [sys.executable, "-m", "targetd.ctl", "status", "--json", "--state-dir",
                 str(daemon.state_dir)],
                cwd=REPO, capture_output=True, text=True, timeout=30, check=True,
            ).stdout
        )  # fmt: skip

    killed: list[int] = []

    def kill_second_worker() -> None:
        killed.append(status()["workers"][1]["pid"])
        os.kill(killed[0], signal.SIGKILL)

    out = run_guest(
        GUEST_DIR / "workers.sh",
        daemon,
        env={"SECOND_IQN": SECOND},
        actions={"kill-second-worker": kill_second_worker},
        timeout=180,
    )
    assert "workers: all steps passed" in out
    now = status()
    assert [w["targets"] for w in now["workers"]] == [[FIRST], [SECOND]]
    assert now["workers"][1]["restarts"] == 1 and now["workers"][1]["pid"] != killed[0]
    # Each login went to the portal, was redirected to the advertised host, and logged in
    # at its worker.
    log = daemon.stderr
    for worker, name in enumerate((FIRST, SECOND)):
        port = now["workers"][worker]["ports"][0]
        assert f'reason="redirected to 10.0.2.2:{port},1"' in log, log
        assert any(
            f"worker={worker} " in line and " event=login " in line and f"target={name}" in line
            for line in log.splitlines()
        ), log
