"""README's "Using it" commands (the libiscsi tools and qemu-img), taken from the page and run
as written against a daemon serving the default configuration, with only the portal's port
changed to the test's: each must exit 0 and print what the page says it shows. open-iscsi's
lines need the kernel initiator (the QEMU guest tier covers it) and are left out."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from conftest import REPO, Daemon

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
    assert re.search(r"Lun:0\s+Type:DIRECT_ACCESS", listing)
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
