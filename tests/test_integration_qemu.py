"""Data path through QEMU's iscsi:// driver: patterns, unaligned ranges, bulk copy, restart."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from clients import run
from conftest import Daemon

MiB = 1 << 20


def qemu_io(url: str, *commands: str) -> str:
    argv = ["qemu-io", "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    out = run(*argv, url).stdout
    # qemu-io exits 1 on a failed pattern check; the message is the useful part.
    assert "verification failed" not in out, out
    assert "failed" not in out.lower(), out
    return out


def test_write_then_read_pattern(targetd: Daemon) -> None:
    out = qemu_io(targetd.url(0), "write -P 0xab 0 1M", "read -P 0xab 0 1M")
    assert "wrote 1048576/1048576 bytes at offset 0" in out
    assert "read 1048576/1048576 bytes at offset 0" in out


def test_wrong_pattern_is_detected(targetd: Daemon) -> None:
    """The check above can fail: reading back a different pattern must be noticed."""
    qemu_io(targetd.url(0), "write -P 0x5a 0 64k")
    proc = run("qemu-io", "-f", "raw", "-c", "read -P 0xa5 0 64k", targetd.url(0), check=False)
    assert "Pattern verification failed" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, 512),
        (512, 4096),
        (1 * MiB - 512, 1024),  # crosses a MiB boundary
        (3 * MiB + 7, 1000),  # unaligned start and end: read-modify-write in the driver
        (5 * MiB + 511, 513),
        (64 * MiB, 4 * MiB),  # more than one burst
        ((1 << 30) - 4096, 4096),  # the last blocks of the LUN
    ],
)
def test_offsets_and_sizes(targetd: Daemon, offset: int, length: int) -> None:
    url = targetd.url(0)
    qemu_io(
        url,
        f"write -P 0x11 {offset} {length}",
        f"read -P 0x11 {offset} {length}",
    )


def test_unaligned_writes_keep_their_neighbours(targetd: Daemon) -> None:
    url = targetd.url(1)
    qemu_io(url, "write -P 0xcc 0 8k")
    qemu_io(url, "write -P 0x33 700 100")
    qemu_io(
        url,
        "read -P 0xcc 0 700",
        "read -P 0x33 700 100",
        "read -P 0xcc 800 7392",
    )


def test_luns_are_independent(targetd: Daemon) -> None:
    qemu_io(targetd.url(0), "write -P 0x01 0 64k")
    qemu_io(targetd.url(1), "write -P 0x02 0 64k")
    qemu_io(targetd.url(0), "read -P 0x01 0 64k")
    qemu_io(targetd.url(1), "read -P 0x02 0 64k")


def test_unwritten_blocks_read_as_zero(targetd: Daemon) -> None:
    qemu_io(targetd.url(0), "read -P 0x00 100M 1M")


def test_read_beyond_the_end_is_refused(targetd: Daemon) -> None:
    proc = run("qemu-io", "-f", "raw", "-c", "read 1G 512", targetd.url(0), check=False)
    assert "read 512/512" not in proc.stdout, proc.stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_qemu_img_convert_round_trip(targetd: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "random.img"
    source.write_bytes(os.urandom(8 * MiB))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), targetd.url(0))
    back = tmp_path / "back.img"
    # The LUN is 1 GiB: qemu-img dd brings back only the first 8 MiB.
    run(
        "qemu-img",
        "dd",
        "-f",
        "raw",
        "-O",
        "raw",
        "bs=1M",
        "count=8",
        f"if={targetd.url(0)}",
        f"of={back}",
    )
    assert back.stat().st_size == 8 * MiB
    assert sha256(back) == sha256(source)
    run("cmp", str(source), str(back))


def test_qemu_img_info(targetd: Daemon) -> None:
    out = run("qemu-img", "info", targetd.url(1)).stdout
    assert "virtual size: 1 GiB (1073741824 bytes)" in out, out


def test_data_survive_a_restart(targetd: Daemon) -> None:
    qemu_io(targetd.url(0), "write -P 0x77 2M 1M", "write -P 0x78 300M 4k")
    qemu_io(targetd.url(1), "write -P 0x79 0 512")
    status = targetd.stop()
    assert status == 0, f"SIGTERM should stop targetd cleanly (status {status}):\n{targetd.stderr}"
    targetd.start()
    qemu_io(targetd.url(0), "read -P 0x77 2M 1M", "read -P 0x78 300M 4k", "read -P 0 1M 1M")
    qemu_io(targetd.url(1), "read -P 0x79 0 512")
