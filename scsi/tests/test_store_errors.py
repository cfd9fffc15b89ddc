"""A failing backing store gets its own SCSI answer: a full file system under a thin LUN is
SPACE ALLOCATION FAILED WRITE PROTECT, EIO is MEDIUM ERROR. One log line per kind and minute,
counted for the metrics, and no traceback."""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path

import pytest
from test_sbc_support import NEXUS, read10, sense_of, write10

from backing.errors import MediumReadError, MediumWriteError
from backing.sparse_file import SparseFile
from scsi.block_device import BlockDevice
from scsi.command import ScsiCommand, ScsiResult, Status
from scsi.logical_unit import Identity
from scsi.store_errors import LOG_INTERVAL, StoreErrors

MiB = 1 << 20
SPACE_ALLOCATION_FAILED = (0x07, 0x27, 0x07)
UNRECOVERED_READ_ERROR = (0x03, 0x11, 0x00)
WRITE_ERROR = (0x03, 0x0C, 0x00)


def run(lu: BlockDevice, cdb: bytes, data_out: bytes | None = None) -> ScsiResult:
    cmd = ScsiCommand(
        cdb=cdb, lun=0, nexus=NEXUS, data_out=None if data_out is None else memoryview(data_out)
    )
    return asyncio.run(lu.execute(cmd))


def test_full_file_system_is_space_allocation_failed(tmpfs, caplog) -> None:
    where = tmpfs("1m")
    lu = BlockDevice(Identity("t/lun0"), SparseFile(where / "lun.img", 64 * MiB))
    caplog.set_level(logging.ERROR)
    assert run(lu, write10(0, 8), bytes(4096)).status == Status.GOOD
    for _ in range(3):
        result = run(lu, write10(1024, 4096), b"\xaa" * (2 * MiB))
        assert sense_of(result) == SPACE_ALLOCATION_FAILED
    assert lu.store_errors.counts["space_exhausted"] == 3
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "space exhausted" in lines[0].getMessage()
    assert lines[0].exc_info is None  # no traceback per command
    # What fitted is still there, and reads keep working.
    assert run(lu, read10(0, 8)).status == Status.GOOD


class _FailingStore(SparseFile):
    """A sparse file whose reads or writes of one range fail as EIO would."""

    def __init__(self, path: Path, size: int, bad: range) -> None:
        super().__init__(path, size)
        self.bad = bad

    async def read_into(self, offset: int, buf: memoryview) -> None:
        if offset in self.bad:
            raise MediumReadError(errno.EIO, str(self.path), "read", offset, len(buf))
        await super().read_into(offset, buf)

    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        if offset in self.bad:
            raise MediumWriteError(errno.EIO, str(self.path), "write", offset, len(data))
        await super().write(offset, data, fua=fua)


def test_eio_is_medium_error(tmp_path: Path) -> None:
    lu = BlockDevice(Identity("t/lun0"), _FailingStore(tmp_path / "a.img", 4 * MiB, range(0, 4096)))
    assert sense_of(run(lu, read10(0, 1))) == UNRECOVERED_READ_ERROR
    assert sense_of(run(lu, write10(0, 1), bytes(512))) == WRITE_ERROR
    assert run(lu, write10(100, 1), bytes(512)).status == Status.GOOD
    assert lu.store_errors.counts == {"space_exhausted": 0, "read_error": 1, "write_error": 1}


@pytest.mark.parametrize("elapsed", [1.0, LOG_INTERVAL + 1])
def test_log_is_rate_limited_per_kind(elapsed: float, caplog) -> None:
    now = [0.0]
    errors = StoreErrors("t/lun0", clock=lambda: now[0])
    caplog.set_level(logging.ERROR)
    fail = MediumWriteError(errno.EIO, "x.img", "write", 0, 512)
    errors.answer(fail)
    errors.answer(MediumReadError(errno.EIO, "x.img", "read", 0, 512))  # another kind: logged
    now[0] = elapsed
    errors.answer(fail)
    messages = [r.getMessage() for r in caplog.records]
    if elapsed < LOG_INTERVAL:
        assert len(messages) == 2
    else:
        assert len(messages) == 3
        assert "(1 more" not in messages[2]
    now[0] = elapsed + 1
    errors.answer(fail)
    now[0] = 3 * LOG_INTERVAL
    errors.answer(fail)
    assert "more since the last report" in caplog.records[-1].getMessage()
    assert errors.counts["write_error"] == 4
