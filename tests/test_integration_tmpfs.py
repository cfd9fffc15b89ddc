"""LUN files on tmpfs (many distributions mount /tmp there): tmpfs has no non-blocking
buffered reads (preadv RWF_NOWAIT gives EOPNOTSUPP), and every READ must still work.

A fresh tmpfs is mounted under the test's temp dir (the tests run as root) and unmounted
after; a real daemon keeps its state there and QEMU's initiator writes and reads it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import run
from conftest import DaemonFactory


@pytest.fixture
def tmpfs_dir(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "tmpfs"
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the tests run as root): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def qemu_io(url: str, *commands: str) -> str:
    argv = ["qemu-io", "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    out = run(*argv, url).stdout
    assert "failed" not in out.lower(), out
    return out


def test_luns_on_tmpfs_read_and_write(targetd_factory: DaemonFactory, tmpfs_dir: Path) -> None:
    state = tmpfs_dir / "state"
    daemon = targetd_factory(state_dir=state)
    out = qemu_io(
        daemon.url(0),
        "write -P 0x5c 0 1M",
        "write -P 0x3d 4M 64k",
        "read -P 0x5c 0 1M",
        "read -P 0x3d 4M 64k",
        "read -P 0 8M 256k",  # never written: a hole on tmpfs too
    )
    assert out.count("read ") == 3, out
    assert (state / "lun0.img").exists()  # the LUN file is on the tmpfs, not elsewhere
    # Reads come from the page cache or not: after a restart, the same answers.
    daemon.restart()
    qemu_io(daemon.url(0), "read -P 0x5c 0 1M", "read -P 0x3d 4M 64k")
    assert "HARDWARE" not in daemon.stderr and "Traceback" not in daemon.stderr
