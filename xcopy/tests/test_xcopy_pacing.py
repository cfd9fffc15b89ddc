"""Kernel copies that give way to host I/O (xcopy.pacing): slices, pauses, copy threads,
and the bytes that land are the same as without pacing."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from pathlib import Path

import pytest
from helpers_xcopy import NEXUS, cscd, extended_copy, make_target
from xcopy_lists import lid1, seg_b2s, seg_filemarks

import xcopy.engine
import xcopy.pacing
import xcopy.streams
from scsi.activity import COMMANDS
from scsi.block_device import BlockDevice
from scsi.command import ScsiCommand
from scsi.file_sink import FileSinkDevice
from scsi.logical_unit import Identity
from scsi.target import ScsiTarget
from xcopy.pacing import GiveWay, copy_executor

MiB = 1 << 20


def test_give_way_sleeps_only_while_hosts_send_commands() -> None:
    counter = [0]
    pace = GiveWay(lambda: counter[0])
    pace.mark = time.monotonic() - 1.0  # a slow slice: the pause is capped
    start = time.monotonic()
    pace()
    assert pace.pauses == 0 and time.monotonic() - start < xcopy.pacing.MAX_PAUSE
    counter[0] += 1
    pace.mark = time.monotonic() - 1.0
    start = time.monotonic()
    pace()
    took = time.monotonic() - start
    assert pace.pauses == 1 and xcopy.pacing.MAX_PAUSE * 0.9 <= took < 0.5
    pace()  # no new command since the last look
    assert pace.pauses == 1


def test_every_scsi_command_moves_the_activity_count(tmp_path: Path) -> None:
    target = make_target(tmp_path)
    before = COMMANDS.started
    asyncio.run(target.execute(ScsiCommand(bytes(6), 0, NEXUS)))
    asyncio.run(target.execute(ScsiCommand(bytes(6), 9, NEXUS)))  # an absent LUN too
    assert COMMANDS.started == before + 2


def test_copy_threads_run_at_background_priority() -> None:
    def probe() -> tuple[str, int]:
        tid = threading.get_native_id()
        return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, tid)

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    name, nice = copy_executor().submit(probe).result()
    assert name.startswith("xcopy-kcopy") and nice >= xcopy.pacing.NICE
    # Only the copy thread: the calling (event loop) thread keeps its priority.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


class _AlwaysBusy(GiveWay):
    """Hosts send a command between every two slices: the copy pauses at every one."""

    made: list[_AlwaysBusy] = []

    def __init__(self) -> None:
        super().__init__(itertools.count().__next__)
        _AlwaysBusy.made.append(self)


@pytest.mark.parametrize("sink", [False, True])
def test_paced_backup_lands_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: bool
) -> None:
    monkeypatch.setattr(xcopy.streams, "SLICE", 64 * 1024)
    monkeypatch.setattr(xcopy.pacing, "MAX_PAUSE", 0.0005)
    monkeypatch.setattr(xcopy.engine, "GiveWay", _AlwaysBusy)
    _AlwaysBusy.made.clear()

    async def main() -> None:
        target = make_target(tmp_path)
        if sink:
            target.luns[2] = FileSinkDevice.from_directory(
                Identity("t/sink"), tmp_path / "sink", 64 * MiB, services=target.luns[0].services
            )
            target = ScsiTarget(target.luns)
        target.nexus_established(NEXUS)
        for lu in target.luns.values():
            lu.pop_unit_attention(NEXUS)
        a = target.luns[0]
        assert isinstance(a, BlockDevice)
        image = os.urandom(MiB)
        await a.store.write(0, image)
        dst = target.luns[2]
        params = lid1(
            [cscd(a), cscd(dst, device_type=1, block_length=0)],
            [
                seg_b2s(0, 1, 256 * 1024, 512, 0),  # 256 KiB records, 4 slices each
                seg_b2s(0, 1, 512 * 1024, 1024, 512),
                seg_b2s(0, 1, 256 * 1024, 512, 1536),
                seg_filemarks(1, 1),
            ],
        )
        r = await extended_copy(target, params)
        assert (r.status, r.sense) == (0, None)
        if sink:
            assert (tmp_path / "sink" / "file-0000.bin").read_bytes() == image
        else:
            img = dst.image  # type: ignore[attr-defined]
            assert [img.length(i) for i in range(3)] == [256 * 1024, 512 * 1024, 256 * 1024]
            assert img.read(0) + img.read(1) + img.read(2) == image and img.is_filemark(3)
        # Slices within a record or a chunk paused: 3 + 7 + 3 for the tape's records.
        assert sum(p.pauses for p in _AlwaysBusy.made) >= 12

    asyncio.run(main())
