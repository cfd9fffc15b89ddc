"""README's "Using it" commands (the libiscsi tools, qemu-img, targetd-copy over URLs), taken
from the page and run as written against a daemon serving the default configuration, with
only the portal's port changed to the test's: each must exit 0 and print what the page says
it shows. open-iscsi's lines need the kernel initiator (the QEMU guest tier covers it) and are
left out."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import REPO, Daemon, hostcopy_env

README = REPO / "README.md"
KERNEL_INITIATOR = "iscsiadm"


def using_it_lines() -> list[str]:
    section = README.read_text().split("## Using it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's 'Using it' has no sh block"
    return [
        line
        for line in block.group(1).splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(KERNEL_INITIATOR)
    ]


def test_the_readme_client_commands_run_as_written(targetd: Daemon, tmp_path: Path) -> None:
    lines = using_it_lines()
    assert [line.split()[0] for line in lines] == [
        "iscsi-ls", "iscsi-inq", "iscsi-readcapacity16", "iscsi-inq", "qemu-img", "qemu-img",
    ]  # fmt: skip
    # The file `qemu-img convert` reads, as a user would have one.
    (tmp_path / "disk.img").write_bytes(b"\x5a" * (1 << 20))
    said = {}
    for line in lines:
        argv = shlex.split(line.replace("127.0.0.1:3260", targetd.portal))
        done = subprocess.run(
            argv, cwd=tmp_path, capture_output=True, text=True, errors="replace", timeout=60
        )
        assert done.returncode == 0, f"{line!r} exited {done.returncode}: {done.stderr}"
        said[" ".join(argv[:3])] = done.stdout
    listing = said[f"iscsi-ls -s iscsi://{targetd.portal}"]
    assert "Target:iqn.2026-11.org.targetd:default" in listing
    # The page's comment: 1 GiB shown as 1023M (libiscsi's arithmetic, not the target's).
    assert re.search(r"Lun:0\s+Type:DIRECT_ACCESS \(Size:1023M\)", listing), listing
    assert re.search(r"Lun:1\s+Type:DIRECT_ACCESS", listing)
    assert re.search(r"Lun:2\s+Type:SEQUENTIAL_ACCESS", listing)
    url = targetd.url(0)
    assert "Vendor:TARGETD" in said[f"iscsi-inq {url}"]
    assert "Total size:1073741824" in said[f"iscsi-readcapacity16 {url}"]
    # "iscsi-inq takes the page code in decimal (131 = 0x83)"
    assert "Page Code:(0x83) DEVICE_IDENTIFICATION" in said["iscsi-inq -e 1"]
    assert "virtual size: 1 GiB (1073741824 bytes)" in said[f"qemu-img info {url}"]
    # The convert wrote disk.img onto LUN 0.
    image = subprocess.run(
        ["qemu-img", "dd", "-f", "raw", "-O", "raw", f"if={url}", f"of={tmp_path / 'back'}",
         "bs=1M", "count=1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert image.returncode == 0, image.stderr
    assert (tmp_path / "back").read_bytes() == b"\x5a" * (1 << 20)


def test_the_readme_backup_over_iscsi_urls_runs_as_written(targetd: Daemon, tmp_path: Path) -> None:
    """README's targetd-copy block for libiscsi URLs, line by line in one shell, against the
    default configuration (only the port changed): each line exits 0, the backup is sealed
    and verified, and the pair is gone at the end as the page says."""
    section = README.read_text().split("The same with no kernel initiator", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's targetd-copy URL example has no sh block"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert lines[0].startswith("D=iscsi://127.0.0.1:3260/")
    env = hostcopy_env(tmp_path)
    script = "set -e\n" + "\n".join(
        f'echo "## {i}" >&2\n{line.replace("127.0.0.1:3260", targetd.portal)}'
        for i, line in enumerate(lines)
    )
    done = subprocess.run(
        ["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert re.search(r"^pair vol: LUN 0 DUPLEX -> LUN 1 DUPLEX, 100% in sync", out, re.M), out
    assert re.search(r"^   0  sealed .* 1073741824  vol ", out, re.M), out
    assert "verified by the target: 1073741824 bytes read back hash to the SHA-256" in out
    status = subprocess.run(
        [sys.executable, "-m", "hostcopy", "status", targetd.url(1)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.stdout == "LUN 1: in no pair (SIMPLEX); targetd-copy create SOURCE MIRROR\n"
