"""Kernel copies that give way to host I/O (xcopy.pacing): slices, pauses, copy threads,
and the bytes that land are the same as without pacing."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
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
from xcopy.digests import digest_executor
from xcopy.pacing import GiveWay, PacedExecutor, copy_executor, set_priority

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


@pytest.fixture
def restore_priority() -> Iterator[None]:
    yield
    set_priority("background")


def _probe() -> tuple[int, int]:
    tid = threading.get_native_id()
    return tid, os.getpriority(os.PRIO_PROCESS, tid)


BASE = os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.usefixtures("restore_priority")
def test_backup_priority_applies_per_job_on_the_same_thread() -> None:
    one = PacedExecutor(1, thread_name_prefix="probe")
    try:
        seen = []
        for mode in ("normal", "background", "normal", "background"):
            set_priority(mode)  # type: ignore[arg-type]
            seen.append(one.submit(_probe).result())
        assert len({tid for tid, _ in seen}) == 1  # one thread, switched back and forth
        assert [nice for _, nice in seen] == [BASE, xcopy.pacing.NICE] * 2
    finally:
        one.shutdown()
    # The daemon's copy and digest threads alike.
    for pool in (copy_executor(), digest_executor()):
        set_priority("normal")
        assert pool.submit(_probe).result()[1] == BASE
        set_priority("background")
        assert pool.submit(_probe).result()[1] == xcopy.pacing.NICE


@pytest.mark.usefixtures("restore_priority")
def test_priority_is_set_only_when_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.setpriority

    def counting(which: int, who: int, prio: int) -> None:
        calls.append(prio)
        real(which, who, prio)

    monkeypatch.setattr(os, "setpriority", counting)
    one = PacedExecutor(1, thread_name_prefix="probe")
    try:
        for mode in ("normal", "normal", "normal", "background", "background"):
            set_priority(mode)  # type: ignore[arg-type]
            one.submit(_probe).result()
    finally:
        one.shutdown()
    assert calls == [BASE, xcopy.pacing.NICE]


@pytest.mark.usefixtures("restore_priority")
def test_a_refused_raise_is_logged_once_and_the_copy_runs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = os.setpriority

    def no_cap_sys_nice(which: int, who: int, prio: int) -> None:
        if prio < os.getpriority(which, who):
            raise PermissionError(1, "Operation not permitted")
        real(which, who, prio)

    monkeypatch.setattr(os, "setpriority", no_cap_sys_nice)
    monkeypatch.setattr(xcopy.pacing, "_refused_logged", False)
    pools = [PacedExecutor(1, thread_name_prefix="probe") for _ in range(2)]
    try:
        with caplog.at_level(logging.WARNING, "xcopy.pacing"):
            for pool in pools:
                set_priority("background")
                pool.submit(_probe).result()
                set_priority("normal")
                assert pool.submit(lambda: 42).result() == 42  # the job runs, at nice 19
                assert pool.submit(_probe).result()[1] == xcopy.pacing.NICE
    finally:
        for pool in pools:
            pool.shutdown()
    warnings = [r.getMessage() for r in caplog.records if r.name == "xcopy.pacing"]
    assert warnings == [
        "backup_priority normal: the copy threads stay at nice 19: [Errno 1] Operation not"
        " permitted"
    ]


@pytest.mark.usefixtures("restore_priority")
def test_give_way_never_sleeps_in_normal_mode() -> None:
    counter = itertools.count()
    set_priority("normal")
    pace = GiveWay(counter.__next__)  # hosts busy: a new command at every look
    start = time.monotonic()
    for _ in range(50):
        pace.mark = time.monotonic() - 1.0  # a slow slice: background mode would sleep 5 ms
        pace()
    assert pace.pauses == 0 and time.monotonic() - start < 50 * xcopy.pacing.MAX_PAUSE / 2
    set_priority("background")  # a reload back to background: the same copy pauses again
    pace.mark = time.monotonic() - 1.0
    pace()
    assert pace.pauses == 1


def test_an_unknown_priority_is_refused() -> None:
    with pytest.raises(ValueError, match="must be one of background, normal, got 'fast'"):
        set_priority("fast")  # type: ignore[arg-type]


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
