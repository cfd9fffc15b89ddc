"""Self-describing backups: the target hashes what a backup streams (START DIGEST, C1h),
writes the end label with the digest (WRITE LABEL, C2h) and checks one by reading the
data back (CHECK LABEL, C3h). Each test states a promise of docs/xcopy.md that would
break if the digest were taken from anything but the bytes on the medium."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from pathlib import Path

from helpers_xcopy import cscd, extended_copy, make_target, ready, send
from xcopy_lists import lid4, rcr_cdb, seg_b2s, seg_filemarks, seg_locate, seg_s2b

from scsi.block_device import BlockDevice
from scsi.file_sink import FileSinkDevice
from scsi.logical_unit import Identity
from scsi.sense import parse_sense
from scsi.target import ScsiTarget
from xcopy import labels, params

GOOD, CHECK = 0, 2
MiB = 1 << 20
KiB = 1 << 10


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def seg_start(stream: int) -> bytes:
    return struct.pack(">BBH2xH4x", params.START_DIGEST, 0, 0x08, stream)


def seg_label(stream: int, offset: int, length: int) -> bytes:
    return struct.pack(">BBH2xHII", params.WRITE_LABEL, 0, 0x0C, stream, offset, length)


def seg_check(stream: int) -> bytes:
    return struct.pack(">BBH2xH4x", params.CHECK_LABEL, 0, 0x08, stream)


def backup_lists(src: bytes, stream: bytes, image_len: int, record: int) -> list[bytes]:
    """A backup cut in two lists, as the host tool sends one too long for one list: the
    digest must span them."""
    blocks = record // 512
    data = [seg_b2s(0, 1, record, blocks, lba) for lba in range(0, image_len // 512, blocks)]
    half = len(data) // 2
    first = lid4([src, stream], [seg_start(1), *data[:half]], list_id=1)
    second = lid4(
        [src, stream],
        [*data[half:], seg_label(1, 0, 8), seg_filemarks(1, 1)],
        list_id=2,
        inline=b"backup-7",
    )
    return [first, second]


def test_the_end_label_carries_the_sha256_of_the_data_across_lists(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        a, tape = t.luns[0], t.luns[2]
        image = bytes(i * 7 % 256 for i in range(MiB))
        await a.store.write(0, image)
        stream = cscd(tape, device_type=1, block_length=0)
        for params_ in backup_lists(cscd(a), stream, MiB, 64 * KiB):
            r = await extended_copy(t, params_, sa=1)
            assert (r.status, r.sense) == (GOOD, None)
        img = tape.image
        assert len(img) == 16 + 2 and img.is_filemark(17)
        end = labels.decode(img.read(16))
        assert end is not None
        assert (end.id, end.sha256, end.length, end.records, end.complete) == (
            "backup-7", hashlib.sha256(image).hexdigest(), MiB, 16, True,
        )  # fmt: skip
        assert img.read(16).startswith(b"TARGETD LABEL END 1\n")
        body = json.loads(img.read(16)[len(labels.MAGIC) :].rstrip(b"\0"))
        assert body["sha256"] == hashlib.sha256(image).hexdigest() and body["bytes"] == MiB

    run(main())


def test_a_file_sink_backup_is_hashed_from_what_landed(tmp_path: Path) -> None:
    """The sink's kernel copies are read back on the digest thread."""

    async def main() -> None:
        import xcopy

        services = xcopy.services()
        luns = {
            0: BlockDevice.from_file(
                Identity("t/lun0"), tmp_path / "a.img", 4 * MiB, services=services
            ),
            1: FileSinkDevice.from_directory(
                Identity("t/lun1"), tmp_path / "sink", 64 * MiB, services=services
            ),
        }
        t = ScsiTarget(luns)
        ready(t)
        image = bytes(i * 13 % 251 for i in range(4 * MiB))
        await luns[0].store.write(0, image)
        stream = cscd(luns[1], device_type=1, block_length=0)
        for params_ in backup_lists(cscd(luns[0]), stream, 4 * MiB, MiB):
            r = await extended_copy(t, params_, sa=1)
            assert (r.status, r.sense) == (GOOD, None)
        body = (tmp_path / "sink" / "file-0000.bin").read_bytes()
        assert body[: 4 * MiB] == image
        end = labels.decode(body[4 * MiB :])
        assert end is not None and end.sha256 == hashlib.sha256(image).hexdigest()
        assert end.length == 4 * MiB

    run(main())


def test_padded_records_through_user_space_are_hashed_as_written(tmp_path: Path) -> None:
    """Fixed 64 KiB records with PAD go through user space: the padding is on the medium,
    so it is in the digest."""

    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        a, tape = t.luns[0], t.luns[2]
        image = bytes(i % 249 for i in range(1000 * 512))
        await a.store.write(0, image)
        fixed = cscd(tape, device_type=1, block_length=64 * KiB, fixed=True, pad=True)
        variable = cscd(tape, device_type=1, block_length=0)
        backup = lid4(
            [cscd(a), fixed, variable],
            [seg_start(2), seg_b2s(0, 1, 8, 1000, 0), seg_label(2, 0, 4)],
            inline=b"pads",
        )
        r = await extended_copy(t, backup, sa=1)
        assert (r.status, r.sense) == (GOOD, None)
        written = b"".join(tape.image.read(i) for i in range(8))
        assert written == image + bytes(8 * 64 * KiB - len(image))
        end = labels.decode(tape.image.read(8))
        assert end is not None and end.sha256 == hashlib.sha256(written).hexdigest()

    run(main())


def test_check_label_reads_the_data_back_and_catches_a_lying_label(tmp_path: Path) -> None:
    """A verify the target runs: the records read to a NUL block device, hashed, and the
    end label compared. A label whose digest was edited fails with 0A/1D/00."""

    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        a, tape = t.luns[0], t.luns[2]
        image = bytes(i * 3 % 256 for i in range(256 * KiB))
        await a.store.write(0, image)
        stream = cscd(tape, device_type=1, block_length=0)
        for params_ in backup_lists(cscd(a), stream, 256 * KiB, 64 * KiB):
            assert (await extended_copy(t, params_, sa=1)).status == GOOD
        nul = cscd(None, nul=True)
        verify = [seg_locate(0, 0), seg_start(0)]
        verify += [seg_s2b(0, 1, 64 * KiB, 128, 0) for _ in range(4)]
        r = await extended_copy(t, lid4([stream, nul], [*verify, seg_check(0)], list_id=3), sa=1)
        assert (r.status, r.sense) == (GOOD, None)
        # The same tape with a label that lies: its digest edited, the data unchanged.
        honest = labels.decode(tape.image.read(4))
        assert honest is not None
        records = [tape.image.read(i) for i in range(4)]
        tape.image.truncate(0)
        for rec in records:
            tape.image.append_record(rec)
        lie = labels.EndLabel(honest.id, "0" * 64, honest.length, honest.records, honest.sealed)
        tape.image.append_record(lie.encode())
        tape.image.append_filemarks(1)
        r = await extended_copy(t, lid4([stream, nul], [*verify, seg_check(0)], list_id=4), sa=1)
        assert parse_sense(r.sense) == (0x0A, 0x1D, 0x00)
        # ... and data that does not match an honest label: one byte flipped.
        tape.image.truncate(0)
        flipped = bytearray(records[2])
        flipped[100] ^= 0x01
        for rec in (records[0], records[1], bytes(flipped), records[3]):
            tape.image.append_record(rec)
        tape.image.append_record(honest.encode())
        tape.image.append_filemarks(1)
        r = await extended_copy(t, lid4([stream, nul], [*verify, seg_check(0)], list_id=5), sa=1)
        assert parse_sense(r.sense) == (0x0A, 0x1D, 0x00)

    run(main())


def test_a_backup_that_failed_cannot_be_labelled_complete(tmp_path: Path) -> None:
    """A copy that fed a digest and then failed drops it: a later WRITE LABEL (a host
    sending the rest of the backup anyway) is refused with 0A/80/20, and so is one with
    no START DIGEST at all. CHECK LABEL of a backup with no end label: 0A/80/21."""

    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        a, tape = t.luns[0], t.luns[2]
        stream = cscd(tape, device_type=1, block_length=0)
        tape.read_only = True  # the data segment fails once the digest is open
        r = await extended_copy(
            t, lid4([cscd(a), stream], [seg_start(1), seg_b2s(0, 1, 65536, 128, 0)]), sa=1
        )
        assert r.status == CHECK
        tape.read_only = False
        label_only = lid4([stream], [seg_label(0, 0, 4)], list_id=2, inline=b"late")
        r = await extended_copy(t, label_only, sa=1)
        assert parse_sense(r.sense) == (0x0A, 0x80, 0x20)
        assert len(tape.image) == 0  # nothing written
        # A partial backup: data and a file mark, no end label.
        r = await extended_copy(
            t,
            lid4(
                [cscd(a), stream],
                [seg_start(1), seg_b2s(0, 1, 65536, 128, 0), seg_filemarks(1, 1)],
                list_id=3,
            ),
            sa=1,
        )
        assert r.status == GOOD
        nul = cscd(None, nul=True)
        check = lid4(
            [stream, nul],
            [seg_locate(0, 0), seg_start(0), seg_s2b(0, 1, 65536, 128, 0), seg_check(0)],
            list_id=4,
        )
        r = await extended_copy(t, check, sa=1)
        assert parse_sense(r.sense) == (0x0A, 0x80, 0x21)

    run(main())


def test_an_aborted_backup_leaves_no_digest_to_seal(tmp_path: Path) -> None:
    """COPY OPERATION ABORT mid-stream: the digest goes with the copy."""

    async def main() -> None:
        t = make_target(tmp_path, blocks=64 * 2048)
        ready(t)
        a, tape = t.luns[0], t.luns[2]
        stream = cscd(tape, device_type=1, block_length=0)
        data = [seg_b2s(0, 1, 65536, 128, lba) for lba in range(0, 64 * 2048, 128)][:200]
        r = await extended_copy(
            t, lid4([cscd(a), stream], [seg_start(1), *data], list_id=9, immed=True), sa=1
        )
        assert r.status == GOOD
        await send(t, bytes([0x83, 0x1C]) + (9).to_bytes(4, "big") + bytes(10))
        manager = a.services.copy_manager
        for _ in range(200):
            r = await send(t, rcr_cdb(0x05, 9))
            if r.data[5] not in (0x11, 0x12):
                break
            await asyncio.sleep(0.01)
        assert r.data[5] == 0x60  # aborted
        assert len(manager.digests) == 0
        r = await extended_copy(t, lid4([stream], [seg_label(0, 0, 4)], inline=b"seal"), sa=1)
        assert parse_sense(r.sense) == (0x0A, 0x80, 0x20)

    run(main())


def test_write_label_refuses_a_bad_identifier_and_a_fixed_stream(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        tape = t.luns[2]
        stream = cscd(tape, device_type=1, block_length=0)
        r = await extended_copy(t, lid4([stream], [seg_label(0, 0, 4)], inline=b"a b\n"), sa=1)
        assert parse_sense(r.sense) == (0x05, 0x26, 0x00)
        fixed = cscd(tape, device_type=1, block_length=512, fixed=True)
        r = await extended_copy(t, lid4([fixed], [seg_start(0)]), sa=1)
        assert parse_sense(r.sense) == (0x05, 0x26, 0x00)
        assert len(tape.image) == 0

    run(main())


def test_a_removed_lu_takes_its_open_digests_with_it(tmp_path: Path) -> None:
    async def main() -> None:
        t = make_target(tmp_path)
        ready(t)
        tape = t.luns[2]
        stream = cscd(tape, device_type=1, block_length=0)
        assert (await extended_copy(t, lid4([stream], [seg_start(0)]), sa=1)).status == GOOD
        manager = tape.services.copy_manager
        assert len(manager.digests) == 1
        await manager.stop_touching([tape])
        assert len(manager.digests) == 0

    run(main())
