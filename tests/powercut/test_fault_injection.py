"""Injected disk faults under a real daemon, through faultfs: a full file system and EIO get
the exact SCSI answer, the daemon logs each kind once with no traceback, counts them in
targetd_lun_store_errors_total, and keeps serving every other LUN (and the rest of the
failing one)."""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, DaemonFactory, free_port
from harness import FaultFS, mounted
from pair_scsi import BlockClient, read16, write16

MiB = 1 << 20
BLOCK = 512
IQN = "iqn.2026-11.org.targetd.test:faults"
SPACE_ALLOCATION_FAILED = (0x07, 0x27, 0x07)
UNRECOVERED_READ_ERROR = (0x03, 0x11, 0x00)
WRITE_ERROR = (0x03, 0x0C, 0x00)


def config(metrics_port: int) -> str:
    return (
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        f'[[target]]\nname = "{IQN}"\n'
        '[[target.lun]]\nlun = 0\npath = "lun0.img"\nsize = "16MiB"\n'
        '[[target.lun]]\nlun = 1\npath = "lun1.img"\nsize = "16MiB"\n'
    )


@pytest.fixture
def faultfs(tmp_path: Path) -> Iterator[FaultFS]:
    with mounted(tmp_path / "faultfs") as fs:
        yield fs


SYNC_CACHE10 = bytes([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])


def metric(port: int, lun: int, kind: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    pattern = rf'targetd_lun_store_errors_total{{target="{IQN}",lun="{lun}",kind="{kind}"}} (\d+)'
    found = re.search(pattern, text)
    assert found is not None, text
    return int(found.group(1))


def start(factory: DaemonFactory, fs: FaultFS) -> tuple[Daemon, BlockClient, int]:
    port = free_port()
    daemon = factory(config(port), state_dir=fs.mountpoint)
    return daemon, BlockClient(daemon.port, IQN), port


def assert_other_lun_serves(client: BlockClient) -> None:
    data = os.urandom(64 * 1024)
    client.write(1, 2 * MiB, data)
    assert client.read(1, 2 * MiB, len(data)) == data


def test_full_file_system_is_space_allocation_failed(
    targetd_factory: DaemonFactory, faultfs: FaultFS
) -> None:
    daemon, client, port = start(targetd_factory, faultfs)
    faultfs.fault("write", "lun0.img", MiB, 2 * MiB, "ENOSPC")
    for _ in range(5):
        status, _, sense = client.run(write16(MiB // BLOCK, 16), data=bytes(8192))
        assert (status, sense) == (0x02, SPACE_ALLOCATION_FAILED)
        status, _, sense = client.run(write16(MiB // BLOCK, 16, fua=True), data=bytes(8192))
        assert (status, sense) == (0x02, SPACE_ALLOCATION_FAILED)
    # The rest of the LUN, and the other LUN, keep working.
    client.write(0, 4 * MiB, b"\x5a" * 8192)
    assert client.read(0, 4 * MiB, 8192) == b"\x5a" * 8192
    assert_other_lun_serves(client)
    assert metric(port, 0, "space_exhausted") == 10
    assert metric(port, 1, "space_exhausted") == 0
    log = daemon.stderr
    assert log.count("space exhausted") == 1, log  # rate-limited: one line for ten failures
    assert "Traceback" not in log and "exc=" not in log, log
    # Space comes back: the same write succeeds.
    faultfs.clear_faults()
    client.ok(write16(MiB // BLOCK, 16), data=b"\x11" * 8192)
    assert client.read(0, MiB, 8192) == b"\x11" * 8192
    client.close()


def test_eio_on_read_and_write_is_medium_error(
    targetd_factory: DaemonFactory, faultfs: FaultFS
) -> None:
    daemon, client, port = start(targetd_factory, faultfs)
    # Reads of a range the kernel has not cached reach the file system.
    faultfs.fault("read", "lun0.img", 8 * MiB, 9 * MiB)
    status, _, sense = client.run(read16(8 * MiB // BLOCK, 8), read=4096)
    assert (status, sense) == (0x02, UNRECOVERED_READ_ERROR)
    faultfs.fault("write", "lun0.img", 10 * MiB, 11 * MiB)
    status, _, sense = client.run(write16(10 * MiB // BLOCK, 8), data=bytes(4096))
    assert (status, sense) == (0x02, WRITE_ERROR)
    assert client.read(0, 0, 4096) == bytes(4096)  # elsewhere the LUN reads
    assert_other_lun_serves(client)
    # A flush that fails is a write error too: SYNCHRONIZE CACHE says the data is not safe.
    faultfs.clear_faults()
    client.write(0, 12 * MiB, b"\x22" * 4096)
    faultfs.fault("fsync", "lun0.img", 0, 16 * MiB)
    status, _, sense = client.run(SYNC_CACHE10)
    assert (status, sense) == (0x02, WRITE_ERROR)
    status, _, sense = client.run(SYNC_CACHE10, lun=1)
    assert (status, sense) == (0x00, None)
    assert metric(port, 0, "read_error") == 1
    assert metric(port, 0, "write_error") == 2
    assert "Traceback" not in daemon.stderr
    client.close()
