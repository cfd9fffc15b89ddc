"""Growing a block LU under its hosts (docs/operations.md, "Growing a LUN"): READ
CAPACITY (10)/(16) and the mode block descriptors report the new end, I/O may reach it,
and each I_T nexus gets CAPACITY DATA HAS CHANGED once. Shrinking and a paired volume are
refused and change nothing."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest
from test_sbc_support import NEXUS, MiB, make_lu, read10, run, sense_of, write10

from backing.pairs.volume import PairVolume
from backing.sparse_file import SparseFile
from scsi.block_device import BlockDevice
from scsi.command import Nexus, ScsiCommand, Status
from scsi.logical_unit import Identity

OTHER = Nexus("iqn.2026-11.org.test:other,i,0x000000000002", "iqn.2026-11.org.targetd:t,t,1")
CAPACITY_DATA_HAS_CHANGED = (0x06, 0x2A, 0x09)
READ_CAPACITY_16 = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + b"\0\0"


def run_as(lu: BlockDevice, nexus: Nexus, cdb: bytes, data_out: bytes | None = None):  # type: ignore[no-untyped-def]
    cmd = ScsiCommand(
        cdb=cdb,
        lun=0,
        nexus=nexus,
        data_out=None if data_out is None else memoryview(bytearray(data_out)),
    )
    return asyncio.run(lu.execute(cmd))


def capacity(lu: BlockDevice, nexus: Nexus = NEXUS) -> tuple[int, int, int]:
    """(last LBA from READ CAPACITY(10), from (16), block size)."""
    rc10 = run_as(lu, nexus, bytes([0x25]) + bytes(9))
    assert rc10.status == Status.GOOD, rc10
    rc16 = run_as(lu, nexus, READ_CAPACITY_16)
    assert rc16.status == Status.GOOD, rc16
    last10, size10 = struct.unpack(">II", bytes(rc10.data)[:8])
    last16, size16 = struct.unpack(">QI", bytes(rc16.data)[:12])
    assert size10 == size16
    return last10, last16, size16


@pytest.mark.parametrize("block_size", [512, 4096])
def test_grow_reports_the_new_capacity_and_serves_past_the_old_end(
    tmp_path: Path, block_size: int
) -> None:
    lu = make_lu(tmp_path, block_size, 4 * MiB)
    old_blocks = 4 * MiB // block_size
    assert capacity(lu) == (old_blocks - 1, old_blocks - 1, block_size)
    # Past the old end: refused before the grow.
    assert sense_of(run(lu, write10(old_blocks, 1), b"x" * block_size)) == (0x05, 0x21, 0x00)

    lu.grow(8 * MiB)

    blocks = 8 * MiB // block_size
    assert capacity(lu) == (blocks - 1, blocks - 1, block_size)
    assert lu.long_block_descriptor()[:8] == blocks.to_bytes(8, "big")
    assert lu.block_descriptor()[:4] == blocks.to_bytes(4, "big")
    data = bytes(range(256)) * (block_size // 256)
    assert run(lu, write10(blocks - 1, 1), data).status == Status.GOOD
    assert bytes(run(lu, read10(blocks - 1, 1)).data) == data
    assert bytes(run(lu, read10(old_blocks, 1)).data) == bytes(block_size)
    # The file grew sparse: the hole between the old end and the block written costs nothing.
    path = tmp_path / f"lun-{block_size}.img"
    assert os.stat(path).st_size == 8 * MiB
    assert os.stat(path).st_blocks * 512 < 2 * MiB


def test_every_nexus_gets_capacity_data_has_changed_once(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    for nexus in (NEXUS, OTHER):
        lu.nexus_established(nexus)
        assert lu.pop_unit_attention(nexus) is not None  # POWER ON, RESET
    lu.grow(8 * MiB)
    lu.grow(12 * MiB)  # two grows before the next command: one unit attention
    for nexus in (NEXUS, OTHER):
        assert sense_of(run_as(lu, nexus, READ_CAPACITY_16)) == CAPACITY_DATA_HAS_CHANGED
        last = 12 * MiB // 512 - 1
        assert capacity(lu, nexus) == (last, last, 512)


def test_shrinking_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    lu.nexus_established(NEXUS)
    lu.pop_unit_attention(NEXUS)
    with pytest.raises(ValueError, match="shrink from 4194304 to 2097152 bytes"):
        lu.grow(2 * MiB)
    with pytest.raises(ValueError, match="not a multiple of the block size"):
        lu.grow(8 * MiB + 100)
    lu.grow(4 * MiB)  # the same size: nothing to do, nothing to tell
    assert lu.pop_unit_attention(NEXUS) is None
    assert lu.num_blocks == 4 * MiB // 512
    assert os.stat(tmp_path / "lun-512.img").st_size == 4 * MiB


def test_a_read_only_file_grows_only_if_already_long_enough(tmp_path: Path) -> None:
    lu = make_lu(tmp_path, read_only=True)
    with pytest.raises(ValueError, match="read-only and shorter"):
        lu.grow(8 * MiB)
    assert lu.num_blocks == 4 * MiB // 512
    os.truncate(tmp_path / "lun-512.img", 8 * MiB)  # grown by its owner
    lu.grow(8 * MiB)
    assert lu.num_blocks == 8 * MiB // 512


def test_a_volume_in_a_pair_is_not_grown(tmp_path: Path) -> None:
    base = SparseFile(tmp_path / "v.img", 4 * MiB)
    volume = PairVolume("t:0", base)
    lu = BlockDevice(Identity("v"), volume)
    volume.pairs.append(type("Pair", (), {"name": "db"})())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in pair db: the volumes of a pair keep equal sizes"):
        lu.grow(8 * MiB)
    assert (lu.num_blocks, volume.size, base.size) == (4 * MiB // 512, 4 * MiB, 4 * MiB)
    volume.pairs.clear()
    lu.grow(8 * MiB)
    assert (lu.num_blocks, volume.size, base.size) == (8 * MiB // 512, 8 * MiB, 8 * MiB)


def test_a_write_in_flight_during_the_grow_completes(tmp_path: Path) -> None:
    """A 4 MiB write (run on a worker thread: past the inline size) is under way when the
    LU grows; it completes GOOD with its data, and the grow is seen by the next command."""
    lu = make_lu(tmp_path, 512, 8 * MiB)
    data = os.urandom(4 * MiB)

    async def main() -> tuple[Status, Status]:
        cmd = ScsiCommand(
            cdb=struct.pack(">BBIBHB", 0x2A, 0, 0, 0, len(data) // 512, 0),
            lun=0,
            nexus=NEXUS,
            data_out=memoryview(bytearray(data)),
        )
        write = asyncio.ensure_future(lu.execute(cmd))
        await asyncio.sleep(0)  # the write runs to its first wait: on the thread
        running = not write.done()
        lu.grow(16 * MiB)
        result = await write
        assert running, "the write ended before the grow: nothing was in flight"
        after = await lu.execute(
            ScsiCommand(cdb=write10(16 * MiB // 512 - 1, 1), lun=0, nexus=NEXUS,
                        data_out=memoryview(bytearray(512)))
        )  # fmt: skip
        return result.status, after.status

    assert asyncio.run(main()) == (Status.GOOD, Status.GOOD)
    assert bytes(run(lu, read10(0, 8)).data) == data[:4096]
    with (tmp_path / "lun-512.img").open("rb") as f:
        assert f.read(len(data)) == data
