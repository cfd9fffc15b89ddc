"""docs/backup.md's walkthrough without a kernel initiator: its configuration served as
written, its device variables set to the LUNs' iscsi:// URLs (which targetd-copy takes for
any device, as the page says), and every `targetd-copy` line of steps 3 to 8 run as written
in one shell. The lines that need /dev nodes (mkfs, mount, fsfreeze) are left out; the
volumes get their data through libiscsi instead, and the restored spares must hold it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from conftest import REPO, DaemonFactory, hostcopy_env

DOC = REPO / "docs" / "backup.md"
VOLUME = 8 << 20
# The page's device variables and the LUN each names (its `dev 0` .. `dev 6`).
DEVICES = {"DATA": 0, "DATA_MIRROR": 1, "LOG": 2, "LOG_MIRROR": 3, "TAPE": 4,
           "SPARE_DATA": 5, "SPARE_LOG": 6}  # fmt: skip


def copy_lines() -> list[str]:
    text = DOC.read_text().split("## 3. ", 1)[1].split("## 9. ", 1)[0]
    lines = [
        line
        for block in re.findall(r"```sh\n(.*?)```", text, re.S)
        for line in block.splitlines()
        if line.startswith("targetd-copy ")
    ]
    return lines


def qemu_img(*args: str) -> None:
    done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_backup_walkthrough_runs_over_iscsi_urls(
    targetd_factory: DaemonFactory, tmp_path: Path
) -> None:
    config = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert config, "docs/backup.md has no configuration"
    daemon = targetd_factory(config.group(1))
    lines = copy_lines()
    verbs = [line.split()[1] for line in lines]
    assert verbs == [
        *("status", "status", "split", "status", "backup", "list", "verify", "verify"),
        *("verify", "resync", "resync", "restore", "restore"),
    ], verbs
    waited = daemon.targetctl("group", "wait", "db", "--state", "DUPLEX", "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    data, log = os.urandom(VOLUME), os.urandom(VOLUME)
    for lun, content in ((0, data), (2, log)):
        (tmp_path / f"in{lun}").write_bytes(content)
        qemu_img("convert", "-n", "-f", "raw", "-O", "raw", str(tmp_path / f"in{lun}"),
                 daemon.url(lun))  # fmt: skip
    env = hostcopy_env(tmp_path)
    env.update({name: daemon.url(lun) for name, lun in DEVICES.items()})
    script = "set -e\n" + "\n".join(lines)
    done = subprocess.run(
        ["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert re.search(r"^pair db-data: LUN 0 DUPLEX -> LUN 1 DUPLEX, .* group db$", out, re.M)
    assert re.search(r"^pair db-data: LUN 0 SPLIT -> LUN 1 SPLIT(-PENDING)?, ", out, re.M), out
    assert re.search(r"^   0  sealed .* 8388608  db-data ", out, re.M), out
    assert re.search(r"^   1  sealed .* 8388608  db-log ", out, re.M), out
    # One split of the group: both backups are of the same instant.
    splits = re.findall(r"^   [01]  sealed .* db-(?:data|log) +(\S+)  ", out, re.M)
    assert len(splits) == 2 and splits[0] == splits[1], splits
    assert "verified by the target: 8388608 bytes" in out
    assert out.count("matches its end label") == 2, out
    for lun, content in ((5, data), (6, log)):
        back = tmp_path / f"out{lun}"
        qemu_img("dd", "-f", "raw", "-O", "raw", f"if={daemon.url(lun)}", f"of={back}",
                 "bs=1M", "count=8")  # fmt: skip
        assert back.read_bytes() == content
