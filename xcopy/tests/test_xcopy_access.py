"""The copy manager as an initiator: a reservation taken while a copy runs stops it at
the next chunk, and the refusal is forwarded in the sense data."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from helpers_xcopy import NEXUS, OTHER, cscd, make_target, manager_of, send
from xcopy_lists import lid4, rcr_cdb, seg_b2b, seg_b2s

from scsi.block_device import BlockDevice
from scsi.reservations import PrType, Reservation
from scsi.sense import Reason
from scsi.tape_device import TapeDevice
from xcopy.errors import CopyAborted

MiB = 1 << 20


def test_a_reservation_taken_mid_copy_stops_it_at_the_next_chunk(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path, blocks=16 * 2048)  # 16 MiB LUs: 16 chunks of 1 MiB
        for nexus in (NEXUS, OTHER):
            t.nexus_established(nexus)
            for lu in t.luns.values():
                lu.pop_unit_attention(nexus)
        src, dst = t.luns[0], t.luns[1]
        assert isinstance(src, BlockDevice) and isinstance(dst, BlockDevice)
        await src.store.write(0, b"\x5a" * (16 * MiB))
        params = lid4(
            [cscd(src), cscd(dst)], [seg_b2b(0, 1, 16 * 2048, 0, 0)], list_id=5, immed=True
        )
        result = await send(t, bytes([0x83, 0x01]) + bytes(8) + len(params).to_bytes(4, "big")
                            + bytes(2), params)  # fmt: skip
        assert result.status == 0
        # Another initiator reserves the destination while the copy runs.
        dst.reservations.reservation = Reservation(OTHER, PrType.WRITE_EXCLUSIVE)
        manager = manager_of(t)
        op = manager.find(NEXUS, 5)
        await op.done.wait()
        assert op.state.value == "failed"
        assert op.bytes_done < 16 * MiB  # stopped before the end
        status = await send(t, rcr_cdb(0x05, 5, 96), None)
        data = bytes(status.data or b"")
        sense = data[32:]
        assert (sense[2] & 0x0F, sense[12], sense[13]) == (0x0A, 0x00, 0x00)

    asyncio.run(main())


def test_the_refusal_is_forwarded_in_descriptor_sense() -> None:
    err = CopyAborted(
        Reason.COPY_ABORTED_NO_ADDITIONAL_SENSE, 3, residue=8, field=6, target_status=0x18
    )
    sense = err.sense(descriptor_format=True)
    assert sense[0] == 0x72 and (sense[1], sense[2], sense[3]) == (0x0A, 0x00, 0x00)
    body = sense[8 : 8 + sense[7]]
    kinds = {}
    at = 0
    while at < len(body):
        kinds[body[at]] = body[at : at + 2 + body[at + 1]]
        at += 2 + body[at + 1]
    # Forwarded sense data: from the copy destination (2), status RESERVATION CONFLICT.
    assert kinds[0x0C] == bytes([0x0C, 2, 2, 0x18])
    assert kinds[0x01][10:12] == (3).to_bytes(2, "big")  # the failed segment


def test_software_write_protect_refuses_the_copy(tmp_path: Path) -> None:
    """SWP set through the control mode page protects the LU from copies too."""

    async def main() -> None:
        t = make_target(tmp_path)
        t.nexus_established(NEXUS)
        for lu in t.luns.values():
            lu.pop_unit_attention(NEXUS)
        src, dst = t.luns[0], t.luns[1]
        assert isinstance(src, BlockDevice) and isinstance(dst, BlockDevice)
        await src.store.write(0, b"\x5a" * 4096)
        dst.software_write_protect = True
        params = lid4([cscd(src), cscd(dst)], [seg_b2b(0, 1, 8, 0, 0)], list_id=6)
        cdb = bytes([0x83, 0x01]) + bytes(8) + len(params).to_bytes(4, "big") + bytes(2)
        result = await send(t, cdb, params)
        sense = result.sense or b""
        assert (sense[2] & 0x0F, sense[12], sense[13]) == (0x0A, 0x00, 0x00)
        appended = sense[sense[9] :]
        assert (appended[2] & 0x0F, appended[12], appended[13]) == (0x07, 0x27, 0x02)
        buf = bytearray(4096)
        await dst.store.read_into(0, memoryview(buf))
        assert buf == bytes(4096)

    asyncio.run(main())


async def _running_copy(tmp_path: Path, list_id: int):  # type: ignore[no-untyped-def]
    """A 16 MiB IMMED block copy LUN 0 -> LUN 1, answered and running."""
    t = make_target(tmp_path, blocks=16 * 2048)
    for nexus in (NEXUS, OTHER):
        t.nexus_established(nexus)
        for lu in t.luns.values():
            lu.pop_unit_attention(nexus)
    src, dst = t.luns[0], t.luns[1]
    assert isinstance(src, BlockDevice)
    await src.store.write(0, b"\x5a" * (16 * MiB))
    params = lid4(
        [cscd(src), cscd(dst)], [seg_b2b(0, 1, 16 * 2048, 0, 0)], list_id=list_id, immed=True
    )
    cdb = bytes([0x83, 0x01]) + bytes(8) + len(params).to_bytes(4, "big") + bytes(2)
    assert (await send(t, cdb, params)).status == 0
    op = manager_of(t).find(NEXUS, list_id)
    assert op is not None
    return t, op


def test_a_lun_removed_mid_copy_stops_it(tmp_path: Path) -> None:
    async def main() -> None:
        t, op = await _running_copy(tmp_path, 7)
        t.luns.pop(1)  # a reload removed LUN 1 from the target
        await op.done.wait()
        assert op.state.value == "failed" and op.bytes_done < 16 * MiB
        sense = op.sense or b""
        appended = sense[sense[9] :]
        assert (appended[2] & 0x0F, appended[12], appended[13]) == (0x05, 0x25, 0x00)

    asyncio.run(main())


def test_copies_of_a_revoked_initiator_stop(tmp_path: Path) -> None:
    async def main() -> None:
        t, op = await _running_copy(tmp_path, 8)
        manager_of(t).abort_from(OTHER.initiator_port)  # someone else's: no effect
        manager_of(t).abort_from(NEXUS.initiator_port)
        await op.done.wait()
        assert op.state.value == "aborted" and op.bytes_done < 16 * MiB

    asyncio.run(main())


def test_luns_are_closed_only_after_the_copies_touching_them(tmp_path: Path) -> None:
    async def main() -> None:
        t, op = await _running_copy(tmp_path, 9)
        await manager_of(t).stop_touching([t.luns[2]])  # the tape: not in this copy
        assert not op.finished
        await manager_of(t).stop_touching([t.luns[1]])
        assert op.finished and op.state.value == "aborted"

    asyncio.run(main())


def test_two_copies_to_one_tape_never_interleave(tmp_path: Path) -> None:
    """Two initiators back up two volumes to the same tape at once: the tape holds all the
    records of one copy, then all of the other's, never a mix."""

    async def main() -> None:
        t = make_target(tmp_path, blocks=8 * 2048)  # 8 MiB volumes
        for nexus in (NEXUS, OTHER):
            t.nexus_established(nexus)
            for lu in t.luns.values():
                lu.pop_unit_attention(nexus)
        a, b, tape = t.luns[0], t.luns[1], t.luns[2]
        assert isinstance(a, BlockDevice) and isinstance(b, BlockDevice)
        await a.store.write(0, b"\xaa" * (8 * MiB))
        await b.store.write(0, b"\xbb" * (8 * MiB))
        record = 64 * 1024
        stream = cscd(tape, device_type=1, block_length=0)

        def backup(source: BlockDevice, list_id: int) -> bytes:
            segments = [seg_b2s(0, 1, record, record // 512, lba) for lba in range(0, 16384, 128)]
            return lid4([cscd(source), stream], segments, list_id=list_id)

        cdb = bytes([0x83, 0x01]) + bytes(8)
        first, second = backup(a, 1), backup(b, 2)
        results = await asyncio.gather(
            send(t, cdb + len(first).to_bytes(4, "big") + bytes(2), first, lun=2),
            send(t, cdb + len(second).to_bytes(4, "big") + bytes(2), second, lun=2, nexus=OTHER),
        )
        assert [r.status for r in results] == [0, 0]
        assert isinstance(tape, TapeDevice)
        owners = [tape.image.read(i)[0] for i in range(len(tape.image))]
        assert len(owners) == 256
        runs = [owners[0]] + [o for prev, o in itertools.pairwise(owners) if o != prev]
        assert sorted(runs) == [0xAA, 0xBB], runs  # one run each: no interleaving

    asyncio.run(main())
