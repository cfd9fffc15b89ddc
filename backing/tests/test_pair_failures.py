"""A pair whose background work fails is never stalled silently: the failure is logged,
the pair goes SUSPENDED with the reason and the error in its status, and a resync (once
the fault is gone) copies again. Faults are injected by stores that raise, as a failing
disk or a bug would."""

from __future__ import annotations

import asyncio
import errno
import logging
import random
from pathlib import Path

import pytest

from backing.pairs import (
    UNCHECKED,
    PairManager,
    PairService,
    PairSettings,
    PairVolume,
    Phase,
    SuspendReason,
    copier,
)
from backing.tests.test_pair_engine import CHUNK, SIZE, MemoryStore


class FaultyStore(MemoryStore):
    """A MemoryStore whose reads or writes raise ``fault`` while it is set."""

    def __init__(self, size: int) -> None:
        super().__init__(size, random.Random(1))
        self.read_fault: BaseException | None = None
        self.write_fault: BaseException | None = None

    async def read_into(self, offset: int, buf: memoryview) -> None:
        if self.read_fault is not None:
            raise self.read_fault
        await super().read_into(offset, buf)

    async def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        if self.write_fault is not None:
            raise self.write_fault
        await super().write(offset, data, fua=fua)

    async def punch_hole(self, offset: int, length: int) -> None:
        # Deallocation still works (the creation punches the target whole first).
        await super().write(offset, bytes(length))


def boot(tmp: Path) -> tuple[PairService, FaultyStore, FaultyStore]:
    manager = PairManager(tmp, PairSettings(chunk_size=CHUNK, lazy_commit=0.01))
    service = PairService(manager)
    src, tgt = FaultyStore(SIZE), FaultyStore(SIZE)
    src.data[:] = random.Random(2).randbytes(SIZE)
    service.register_volume(PairVolume("t/lun0", src))
    service.register_volume(PairVolume("t/lun1", tgt))
    return service, src, tgt


async def settled(service: PairService, phase: Phase, timeout: float = 5.0) -> None:
    async def wait() -> None:
        while service.status(name="p").phase is not phase:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)


EIO = OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize(
    ("side", "fault", "reason", "error"),
    [
        ("target", EIO, SuspendReason.TARGET_WRITE_ERROR, "OSError: [Errno 5] Input/output error"),
        ("source", EIO, SuspendReason.SOURCE_READ_ERROR, "OSError: [Errno 5] Input/output error"),
        ("source", RuntimeError("a bug"), SuspendReason.INTERNAL_ERROR, "RuntimeError: a bug"),
    ],
)
def test_a_failing_copy_suspends_the_pair_with_the_reason_and_a_resync_recovers(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    side: str,
    fault: BaseException,
    reason: SuspendReason,
    error: str,
) -> None:
    async def run() -> None:
        service, src, tgt = boot(tmp_path)
        await service.start()
        store = tgt if side == "target" else src
        if side == "target":
            store.write_fault = fault
        else:
            store.read_fault = fault
        await service.create("p", "t/lun0", "t/lun1", access=UNCHECKED)
        await settled(service, Phase.SUSPENDED)
        status = service.status(name="p")
        assert (status.reason, status.error) == (reason, error)
        assert status.as_dict()["error"] == error
        assert status.dirty_chunks > 0
        # The reason and the error are kept in the pair file: a restart still shows them.
        await service.stop()
        service, _, _ = boot(tmp_path)
        service.manager.volumes["t/lun0"].base = src
        service.manager.volumes["t/lun1"].base = tgt
        await service.start()
        status = service.status(name="p")
        assert (status.phase, status.reason, status.error) == (Phase.SUSPENDED, reason, error)
        # The workers are still there: once the disk is back, a resync copies everything.
        store.read_fault = store.write_fault = None
        await service.resync(access=UNCHECKED, name="p")
        assert service.status(name="p").error is None
        await settled(service, Phase.DUPLEX)
        assert tgt.data == src.data
        await service.stop()

    with caplog.at_level(logging.ERROR, logger="backing.pairs.engine"):
        asyncio.run(run())
    assert f"pair p: SUSPENDED ({reason.name}): {error}" in caplog.text
    assert "copying chunk" in caplog.text  # with the traceback


def test_a_failing_bitmap_writer_suspends_a_split_pair(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(copier, "FAILED_LOOP_PAUSE", 0.01)

    async def run() -> None:
        service, _, _ = boot(tmp_path)
        await service.start()
        await service.create("p", "t/lun0", "t/lun1", access=UNCHECKED)
        await settled(service, Phase.DUPLEX)
        await service.split(access=UNCHECKED, name="p")
        await settled(service, Phase.SPLIT)
        pair = service.pair_of("t/lun0")
        assert pair is not None

        async def broken_commit() -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        # Host writes after the split mark changed chunks; the bitmap writer then fails.
        await pair.source.write(0, b"x" * 4096)
        pair.journal.commit = broken_commit  # type: ignore[method-assign]
        pair.journal.mark(1, 5)
        await settled(service, Phase.SUSPENDED)
        status = service.status(name="p")
        assert status.reason is SuspendReason.PAIR_FILE_ERROR
        assert status.error == "OSError: [Errno 28] No space left on device"
        await asyncio.sleep(0.3)  # the writer fails again and again: reported once
        await service.stop()

    with caplog.at_level(logging.ERROR, logger="backing.pairs.engine"):
        asyncio.run(run())
    assert caplog.text.count("pair p: bitmap writer failed") == 1
