"""LUN files on the file systems people put them on: ext4, xfs, btrfs, tmpfs (many
distributions mount /tmp there) and overlayfs (a container's root). tmpfs and overlayfs have
no non-blocking buffered reads (preadv RWF_NOWAIT gives EOPNOTSUPP), and every READ must
still work.

Each file system is made fresh under the test's temp dir (the tests run as root): tmpfs and
overlayfs directly, the others on a loop device over a sparse image; all are unmounted after.
A real daemon keeps its state there and QEMU's initiator writes and reads it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import run
from conftest import DaemonFactory

FILE_SYSTEMS = ("ext4", "xfs", "btrfs", "tmpfs", "overlay")
MKFS = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q"], "btrfs": ["mkfs.btrfs", "-q"]}


def sh(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)}: {proc.stderr.strip()} (the tests run as root)")


@pytest.fixture(params=FILE_SYSTEMS)
def lun_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    kind = request.param
    where = tmp_path / "mnt"
    where.mkdir()
    if kind == "tmpfs":
        sh("mount", "-t", "tmpfs", "-o", "size=256m,mode=0700", "tmpfs", str(where))
    elif kind == "overlay":
        for d in ("lower", "upper", "work"):
            (tmp_path / d).mkdir()
        layers = f"lowerdir={tmp_path / 'lower'},upperdir={tmp_path / 'upper'}"
        sh("mount", "-t", "overlay", "overlay", "-o", f"{layers},workdir={tmp_path / 'work'}",
           str(where))  # fmt: skip
    else:
        image = tmp_path / f"{kind}.img"
        with image.open("wb") as f:
            f.truncate(384 << 20)
        sh(*MKFS[kind], str(image))
        sh("mount", "-o", "loop", str(image), str(where))
    try:
        yield where
    finally:
        # Lazy: a daemon that a failed test left running must not keep the mount.
        subprocess.run(["umount", "-l", str(where)], check=False)


def qemu_io(url: str, *commands: str) -> str:
    argv = ["qemu-io", "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    out = run(*argv, url).stdout
    assert "failed" not in out.lower(), out
    return out


def test_luns_read_and_write(targetd_factory: DaemonFactory, lun_dir: Path) -> None:
    state = lun_dir / "state"
    daemon = targetd_factory(state_dir=state)
    out = qemu_io(
        daemon.url(0),
        "write -P 0x5c 0 1M",
        "write -P 0x3d 4M 64k",
        "read -P 0x5c 0 1M",
        "read -P 0x3d 4M 64k",
        "read -P 0 8M 256k",  # never written: a hole (or zeros) there too
    )
    assert out.count("read ") == 3, out
    assert (state / "lun0.img").exists()  # the LUN file is on this file system
    # From the page cache or not: after a restart, the same answers.
    daemon.restart()
    qemu_io(daemon.url(0), "read -P 0x5c 0 1M", "read -P 0x3d 4M 64k")
    assert "HARDWARE" not in daemon.stderr and "Traceback" not in daemon.stderr
    daemon.stop()
