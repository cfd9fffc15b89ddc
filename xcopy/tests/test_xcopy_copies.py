"""The copy manager end to end inside one process: copies between the LUs of a target,
results, limits, aborts and the sense of every failure."""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers_xcopy import NEXUS, OTHER, cscd, extended_copy, make_target, ready, send
from xcopy_lists import lid1, lid4, rcr_cdb, seg_b2b, seg_b2s, seg_filemarks, seg_locate, seg_s2b

from backing.sparse_file import Extent
from scsi.block_device import BlockDevice
from scsi.logical_unit import Identity
from scsi.sense import parse_sense
from scsi.target import ScsiTarget
from xcopy import limits
from xcopy.manager import CopyManager

GOOD, CHECK = 0, 2
MiB = 1 << 20


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def read(lu: BlockDevice, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    await lu.store.read_into(offset, memoryview(buf))
    return bytes(buf)


def test_block_to_block_copies_and_punches_source_holes(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        a, b = t.luns[0], t.luns[1]
        await a.store.write(0, b"A" * 64 * 1024)
        await a.store.write(512 * 1024, b"B" * 4096)
        await b.store.write(0, b"\xff" * 1024 * 1024)  # old data where the source has holes
        r = await extended_copy(t, lid1([cscd(a), cscd(b)], [seg_b2b(0, 1, 2048, 0, 0)]))
        assert (r.status, r.sense) == (GOOD, None)
        assert await read(b, 0, 1024 * 1024) == await read(a, 0, 1024 * 1024)
        mapped = [e for e in b.store.extents(0, 1024 * 1024) if e.mapped]
        assert mapped == [Extent(0, 64 * 1024, True), Extent(512 * 1024, 4096, True)]

    run(main())


def test_overlapping_copy_within_one_lu(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        a = t.luns[0]
        data = bytes(range(256)) * 2 * 1024  # 512 KiB, 1024 blocks
        await a.store.write(0, data)
        r = await extended_copy(t, lid1([cscd(a)], [seg_b2b(0, 0, 1024, 0, 100)]))
        assert r.status == GOOD
        assert await read(a, 100 * 512, len(data)) == data

    run(main())


def test_unreachable_cscd_and_range_past_the_end(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        a = t.luns[0]
        stranger = BlockDevice.from_file(Identity("elsewhere/lun0"), tmp_path / "x.img", MiB)
        r = await extended_copy(
            t, lid1([cscd(a), cscd(stranger)], [seg_b2b(0, 0, 1, 0, 1), seg_b2b(0, 1, 1, 0, 0)])
        )
        assert r.status == CHECK and parse_sense(r.sense) == (0x0A, 0x0D, 0x02)
        assert r.sense[10:12] == b"\x00\x01"  # the second segment failed
        assert r.sense[15:18] == bytes([0xA0, 0, 6])  # segment pointer: destination index
        r = await extended_copy(t, lid1([cscd(a)], [seg_b2b(0, 0, 16, 0, 2048 - 8)]))
        assert r.status == CHECK and parse_sense(r.sense) == (0x0A, 0x00, 0x00)
        assert int.from_bytes(r.sense[3:7], "big") == 16  # residue: nothing copied
        appended = r.sense[r.sense[9] :]
        assert parse_sense(appended) == (0x05, 0x21, 0x00)  # the destination's own sense
        # A CSCD index past the list is unreachable too (libiscsi ValidSegDescr).
        r = await extended_copy(t, lid1([cscd(a)], [seg_b2b(0, 1, 1, 0, 0)]))
        assert parse_sense(r.sense) == (0x0A, 0x0D, 0x02)

    run(main())


def test_results_status_details_and_operating_parameters(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        a, b = t.luns[0], t.luns[1]
        r = await send(t, rcr_cdb(0x00, 7))
        assert r.status == CHECK and parse_sense(r.sense) == (0x05, 0x24, 0x00)
        r = await extended_copy(t, lid1([cscd(a), cscd(b)], [seg_b2b(0, 1, 8, 0, 0)], list_id=7))
        assert r.status == GOOD
        r = await send(t, rcr_cdb(0x00, 7))
        assert bytes(r.data) == bytes.fromhex("000000080100010000001000")
        r = await send(t, rcr_cdb(0x00, 7))  # reported once: the list id is free again
        assert r.status == CHECK
        r = await extended_copy(t, lid1([cscd(a)], [seg_b2b(0, 0, 8, 2047, 0)], list_id=8))
        assert r.status == CHECK
        r = await send(t, rcr_cdb(0x04, 8))
        data = bytes(r.data)
        assert int.from_bytes(data[:4], "big") == len(data) - 4 and data[56] == 0x02
        assert data[60:] == r_sense(r, data)
        r = await send(t, rcr_cdb(0x03))
        p = bytes(r.data)
        assert int.from_bytes(p[8:10], "big") == limits.MAX_CSCD_DESCRIPTORS
        assert int.from_bytes(p[10:12], "big") == limits.MAX_SEGMENT_DESCRIPTORS
        assert int.from_bytes(p[12:16], "big") == limits.MAX_DESCRIPTOR_LIST_LENGTH
        assert p[37] == limits.DATA_SEGMENT_GRANULARITY
        assert p[44 : 44 + p[43]] == bytes(
            [0x00, 0x01, 0x02, 0x04, 0x0A, 0x10, 0x11, 0x12, 0xC0, 0xC1, 0xC2, 0xC3, 0xE4]
        )

    run(main())


def r_sense(r, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
    return data[60 : 60 + int.from_bytes(data[58:60], "big")]


class GatedReader:
    """A source that reads only as far as the test lets it: a copy that runs for as long
    as the test needs, with every read counted."""

    def __init__(self, lu: BlockDevice) -> None:
        self.lu = lu
        self.gate = asyncio.Event()
        self.reads = 0

    async def prepare(self, offset: int, length: int) -> None:
        return None

    async def read_into(self, offset: int, buf: memoryview) -> None:
        self.reads += 1
        await self.gate.wait()
        await self.lu.store.read_into(offset, buf)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return [Extent(offset, length, True)]

    async def close(self) -> None:
        return None


def _gated() -> tuple[CopyManager, list[GatedReader]]:
    """A copy manager whose readers wait at a gate (and only two copies at once)."""
    readers: list[GatedReader] = []

    async def factory(lu, copy_list, nexus):  # type: ignore[no-untyped-def]
        reader = GatedReader(lu)
        readers.append(reader)
        return reader

    return CopyManager(factory, max_concurrent=2), readers


async def _first_read(readers: list[GatedReader]) -> None:
    while not (readers and readers[0].reads):
        await asyncio.sleep(0.005)


def test_immed_progress_duplicate_id_abort_and_limit(tmp_path: Path) -> None:
    async def main() -> None:
        manager, readers = _gated()
        t = make_target(tmp_path, blocks=16384, manager=manager)
        ready(t)
        a, b = t.luns[0], t.luns[1]
        params = lid4([cscd(a), cscd(b)], [seg_b2b(0, 1, 8192, 0, 8192)], list_id=42, immed=True)
        r = await extended_copy(t, params, sa=1)
        assert (r.status, r.sense) == (GOOD, None)  # IMMED: answered before the copy ends
        # The copy starts in the background: wait (on a loaded machine, a while) for its
        # first read, which stops at the gate.
        await asyncio.wait_for(_first_read(readers), 30)
        await asyncio.sleep(0.05)
        r = await send(t, rcr_cdb(0x05, 42))
        status = bytes(r.data)
        assert status[5] == 0x12 and int.from_bytes(status[16:24], "big") == 0
        # The copy reads ahead at most QUEUE_DEPTH chunks: backpressure, not a 4 MiB buffer.
        assert readers[0].reads == 1
        r = await extended_copy(t, params, sa=1)
        assert parse_sense(r.sense) == (0x05, 0x00, 0x16)  # OPERATION IN PROGRESS
        # Another initiator may use the same list identifier.
        r = await extended_copy(t, params, sa=1, nexus=OTHER)
        assert r.status == GOOD
        third = lid4([cscd(a), cscd(b)], [seg_b2b(0, 1, 8, 0, 0)], list_id=43, immed=True)
        r = await extended_copy(t, third, sa=1)
        assert parse_sense(r.sense) == (0x05, 0x55, 0x03)  # two copies at most
        readers[0].gate.set()
        op = manager.find(NEXUS, 42)
        assert op is not None
        await asyncio.wait_for(op.done.wait(), 30)  # a loaded machine takes its time
        r = await send(t, rcr_cdb(0x05, 42))
        status = bytes(r.data)
        assert status[5] == 0x01 and int.from_bytes(status[16:24], "big") == 8192 * 512
        assert int.from_bytes(status[24:26], "big") == 1
        # COPY OPERATION ABORT stops the other initiator's copy, which never got going.
        abort = bytes([0x83, 0x1C, 0, 0, 0, 42]) + bytes(10)
        r = await send(t, abort, nexus=OTHER)
        assert r.status == GOOD
        r = await send(t, rcr_cdb(0x05, 42), nexus=OTHER)
        assert bytes(r.data)[5] == 0x60
        assert readers[1].reads <= limits.QUEUE_DEPTH + 1

    run(main())


def test_backup_to_tape_and_restore(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        a, b, tape = t.luns[0], t.luns[1], t.luns[2]
        image = bytes(i % 251 for i in range(512 * 1024))
        await a.store.write(0, image)
        variable = cscd(tape, device_type=1, block_length=0)
        backup = lid1(
            [cscd(a), variable],
            [
                seg_b2s(0, 1, 256 * 1024, 512, 0),
                seg_b2s(0, 1, 256 * 1024, 512, 512),
                seg_filemarks(1, 1),
            ],
        )
        r = await extended_copy(t, backup)
        assert (r.status, r.sense) == (GOOD, None)
        img = tape.image
        assert len(img) == 3 and img.is_filemark(2) and tape.position == 3
        assert img.read(0) + img.read(1) == image
        # Fixed 64 KiB records, padded: 1000 blocks is not a whole number of records.
        fixed = cscd(tape, device_type=1, block_length=64 * 1024, fixed=True, pad=True)
        r = await extended_copy(t, lid1([cscd(a), fixed], [seg_b2s(0, 1, 8, 1000, 0)]))
        assert r.status == GOOD and [img.length(i) for i in range(3, 11)] == [65536] * 8
        assert img.read(10)[-(8 * 65536 - 512000) :] == bytes(8 * 65536 - 512000)
        # Restore the first file to LUN 1 with segment 01h after LOCATE 0 (segment 12h).
        restore = lid1(
            [variable, cscd(b)],
            [
                seg_locate(0, 0),
                seg_s2b(0, 1, 256 * 1024, 512, 100),
                seg_s2b(0, 1, 256 * 1024, 512, 612),
            ],
        )
        r = await extended_copy(t, restore)
        assert (r.status, r.sense) == (GOOD, None)
        assert await read(b, 100 * 512, len(image)) == image
        # Restoring again runs into the file mark: COPY ABORTED, data underrun.
        r = await extended_copy(t, lid1([variable, cscd(b)], [seg_s2b(0, 1, 256 * 1024, 512, 0)]))
        assert parse_sense(r.sense) == (0x0A, 0x0D, 0x04)

    run(main())


def test_inexact_stream_segment_and_wrong_device_type(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        a, tape = t.luns[0], t.luns[2]
        variable = cscd(tape, device_type=1, block_length=0)
        r = await extended_copy(t, lid1([cscd(a), variable], [seg_b2s(0, 1, 1000, 2, 0)]))
        assert parse_sense(r.sense) == (0x05, 0x26, 0x0A)
        r = await extended_copy(t, lid1([cscd(a), variable], [seg_b2b(0, 1, 1, 0, 0)]))
        assert parse_sense(r.sense) == (0x0A, 0x0D, 0x03)
        # A CSCD that claims a block LU is a tape names nothing reachable of that type.
        r = await extended_copy(t, lid1([cscd(a, device_type=1)], [seg_filemarks(0, 1)]))
        assert parse_sense(r.sense) == (0x0A, 0x0D, 0x03)

    run(main())


def test_inquiry_3pc_vpd_8f_and_rsoc(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        r = await send(t, bytes([0x12, 0, 0, 0, 96, 0]))
        assert r.data[5] & 0x08
        r = await send(t, bytes([0x12, 1, 0, 0, 255, 0]))
        assert 0x8F in bytes(r.data)[4:]
        r = await send(t, bytes([0x12, 1, 0x8F, 0, 255, 0]))
        page = bytes(r.data)
        assert page[:2] == b"\x00\x8f" and int.from_bytes(page[2:4], "big") == len(page) - 4
        assert page[4:6] == b"\x00\x01"  # supported commands first
        commands = page[9 : 9 + page[8]]
        assert commands == bytes([0x83, 3, 0x00, 0x01, 0x1C, 0x84, 6, 0, 1, 3, 4, 5, 6])
        rsoc = bytes([0xA3, 0x0C, 0x02, 0x84, 0x00, 0x03, 0, 0, 1, 0, 0, 0])
        r = await send(t, rsoc)
        assert bytes(r.data)[:4] == bytes([0, 0x03, 0, 16])
        r = await send(t, bytes([0xA3, 0x0C, 0x02, 0x83, 0x00, 0x01, 0, 0, 1, 0, 0, 0]), lun=2)
        assert bytes(r.data)[1] & 0x07 == 0x03  # the tape LU serves it too

    run(main())


def test_backup_to_a_file_sink_holds_exactly_the_bytes(tmp_path: Path) -> None:
    from scsi.file_sink import FileSinkDevice

    async def main() -> None:
        import xcopy

        services = xcopy.services()
        luns = {
            0: BlockDevice.from_file(
                Identity("t/lun0"), tmp_path / "a.img", 4 * MiB, services=services
            ),
            1: BlockDevice.from_file(
                Identity("t/lun1"), tmp_path / "b.img", 4 * MiB, services=services
            ),
            3: FileSinkDevice.from_directory(
                Identity("t/lun3"), tmp_path / "sink", 64 * MiB, services=services
            ),
        }
        t = ScsiTarget(luns)
        ready(t)
        a, b, sink = luns[0], luns[1], luns[3]
        image = bytes(i % 253 for i in range(MiB))
        await a.store.write(0, image)
        stream = cscd(sink, device_type=1, block_length=0)
        backup = [seg_b2s(0, 1, 256 * 1024, 512, lba) for lba in range(0, 2048, 512)]
        r = await extended_copy(t, lid1([cscd(a), stream], [*backup, seg_filemarks(1, 1)]))
        assert (r.status, r.sense) == (GOOD, None)
        assert (tmp_path / "sink" / "file-0000.bin").read_bytes() == image
        # And back: REWIND through the sink's own command, then segment 01h.
        assert (await send(t, bytes([0x01, 0, 0, 0, 0, 0]), lun=3)).status == GOOD
        restore = [seg_s2b(0, 1, 256 * 1024, 512, lba) for lba in range(0, 2048, 512)]
        r = await extended_copy(t, lid1([stream, cscd(b)], restore, list_id=2))
        assert (r.status, r.sense) == (GOOD, None)
        assert await read(b, 0, MiB) == image
        # SPACE means nothing to a file sink: COPY ABORTED with its INVALID OPCODE sense.
        r = await extended_copy(t, lid1([stream], [seg_locate(0, 0)], list_id=3))
        assert parse_sense(r.sense) == (0x0A, 0x00, 0x00)
        assert parse_sense(r.sense[r.sense[9] :]) == (0x05, 0x20, 0x00)
        r = await send(t, bytes([0x12, 0, 0, 0, 96, 0]), lun=3)
        assert r.data[0] == 0x01 and r.data[5] & 0x08

    run(main())


def test_results_survive_a_restart_and_a_running_copy_reads_as_failed(tmp_path: Path) -> None:
    from xcopy.journal import CopyJournal

    async def main() -> None:
        journal = CopyJournal(tmp_path / "copies")
        readers: list[GatedReader] = []

        async def factory(lu, copy_list, nexus):  # type: ignore[no-untyped-def]
            readers.append(GatedReader(lu))
            return readers[-1]

        manager = CopyManager(factory, journal=journal)
        t = make_target(tmp_path, blocks=16384, manager=manager)
        ready(t)
        a, b = t.luns[0], t.luns[1]
        done = lid1([cscd(a), cscd(b)], [seg_b2b(0, 1, 8, 0, 0)], list_id=3)
        running = lid4([cscd(a), cscd(b)], [seg_b2b(0, 1, 64, 0, 0)], list_id=4, immed=True)
        task = asyncio.create_task(extended_copy(t, done))
        while not readers:
            await asyncio.sleep(0.001)
        readers[0].gate.set()
        assert (await task).status == GOOD
        assert (await extended_copy(t, running, sa=1)).status == GOOD
        # "Restart": a new manager over the same records; the running copy died with it.
        # A dead process writes nothing more: the old manager's journal is settled and then
        # detached before its copy is cancelled (else the cancelled copy's own final record
        # can land after the reborn manager has reported and removed it).
        await journal.settled()
        manager.journal = None
        for op in manager.running():
            op.task.cancel()
        for lu in t.luns.values():
            lu.close()
        reborn = CopyManager(journal=CopyJournal(tmp_path / "copies"))
        t = make_target(tmp_path, blocks=16384, manager=reborn)
        ready(t)
        r = await send(t, rcr_cdb(0x00, 3))
        assert bytes(r.data)[4] == 0x01  # completed, as before the restart
        r = await send(t, rcr_cdb(0x05, 4))
        status = bytes(r.data)
        assert status[5] == 0x02 and status[12] == 0x02  # failed, CHECK CONDITION
        assert parse_sense(status[32:]) == (0x0A, 0x29, 0x00)
        await reborn.journal.settled()
        assert not list((tmp_path / "copies").glob("*.json"))  # both reported: gone

    run(main())
