"""The pair engine writes a range of a volume only once no READ of it sent from the file is
still in flight (PairVolume.unsent): it waits for the overlapping ones, asks their
initiators for an acknowledgement, and ignores the others."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

from backing.pairs import UNCHECKED, PairService, PairVolume, Phase, VolumeState
from backing.tests.test_pair_engine import CHUNK, SIZE, MemoryStore, data_of, make


class Read:
    """A READ's hold as scsi.task_set.Hold keeps it: released once."""

    def __init__(self) -> None:
        self.wanted = 0
        self.done: Callable[[], None] | None = None
        self.released = False

    def want(self) -> None:
        self.wanted += 1

    def when_released(self, done: Callable[[], None]) -> None:
        self.done = done

    def release(self) -> None:
        assert self.done is not None and not self.released
        self.released = True
        self.done()


def test_unsent_waits_for_the_overlapping_reads_only() -> None:
    async def main() -> None:
        volume = PairVolume("v", MemoryStore(SIZE, random.Random(1)))
        first, second, elsewhere = Read(), Read(), Read()
        volume.sending(0, 65536, first)
        volume.sending(32768, 65536, second)
        volume.sending(1 << 20, 65536, elsewhere)
        await asyncio.wait_for(volume.unsent(65536 + 32768, 4096), 1)  # after both
        await asyncio.wait_for(volume.unsent(1 << 19, 4096), 1)  # between
        waiting = asyncio.ensure_future(volume.unsent(16384, 32768))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert (first.wanted, second.wanted, elsewhere.wanted) == (1, 1, 0)
        first.release()
        await asyncio.sleep(0.01)
        assert not waiting.done()
        second.release()
        await asyncio.wait_for(waiting, 1)
        assert elsewhere.wanted == 0
        waiting = asyncio.ensure_future(volume.unsent(0, SIZE))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        elsewhere.release()
        await asyncio.wait_for(waiting, 1)

    asyncio.run(main())


def test_a_reverse_resync_waits_for_a_read_in_flight_and_a_stop_does_not(tmp_path: Path) -> None:
    """The restore of a chunk a READ of the source is still being sent from waits for it
    (the source keeps the bytes the READ ran on); a stop meanwhile does not wait for an
    initiator that may never answer: the waiting copy is given up (its chunk stays to copy,
    and the restart copies it)."""

    async def main() -> None:
        manager, src, _ = make(tmp_path, 1, copy_rate=0)
        service = PairService(manager)
        await src.write(0, b"\x11" * SIZE)
        await service.create("p", "t/lun0", "t/lun1", access=UNCHECKED)
        await manager.wait("p", VolumeState.DUPLEX, timeout=30)
        await service.split(name="p", access=UNCHECKED)
        await manager.wait("p", VolumeState.SPLIT, timeout=30)
        await src.write(0, b"\x22" * CHUNK)
        read = Read()
        src.sending(0, CHUNK, read)  # a READ of the changed chunk, still being sent
        await service.reverse_resync(name="p", access=UNCHECKED)
        await asyncio.sleep(0.2)
        assert data_of(src)[:CHUNK] == b"\x22" * CHUNK  # not restored under the READ
        assert read.wanted == 1  # its initiator was asked to acknowledge it
        assert manager.status("p").phase is Phase.REVERSE_COPY
        await asyncio.wait_for(manager.stop(), 5)
        assert data_of(src)[:CHUNK] == b"\x22" * CHUNK

    asyncio.run(main())
