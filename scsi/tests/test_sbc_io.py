"""SBC data commands on a BlockDevice over a temp file: READ/WRITE at both block sizes,
range and protection errors with exact sense, residual handling, VERIFY, WRITE AND VERIFY,
ORWRITE and COMPARE AND WRITE."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path
from unittest import mock

import pytest
from test_sbc_support import (
    NEXUS,
    cdb10,
    cdb12,
    cdb16,
    make_lu,
    read10,
    read_blocks,
    run,
    sense_of,
    write10,
)

from scsi.command import ScsiCommand, Status

LBA_OUT_OF_RANGE_SENSE = bytes(
    [0x70, 0, 0x05, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0]
)


@pytest.mark.parametrize("block_size", [512, 4096])
def test_write_read_round_trip_every_cdb_size(tmp_path: Path, block_size: int) -> None:
    lu = make_lu(tmp_path, block_size)
    n = lu.num_blocks
    assert n == 4 * 1024 * 1024 // block_size
    cases = [
        (bytes([0x0A, 0, 0, 3, 2, 0]), bytes([0x08, 0, 0, 3, 2, 0]), 3, 2),
        (write10(10, 3), read10(10, 3), 10, 3),
        (cdb12(0xAA, 20, 4), cdb12(0xA8, 20, 4), 20, 4),
        (cdb16(0x8A, n - 5, 5), cdb16(0x88, n - 5, 5), n - 5, 5),
    ]
    for write_cdb, read_cdb, lba, blocks in cases:
        data = os.urandom(blocks * block_size)
        assert run(lu, write_cdb, data).status == Status.GOOD
        result = run(lu, read_cdb)
        assert result.status == Status.GOOD
        assert isinstance(result.data, bytearray)
        assert bytes(result.data) == data
        assert read_blocks(lu, lba, blocks) == data
    assert read_blocks(lu, 0, 3) == bytes(3 * block_size)  # never written: a hole
    lu.close()


def test_six_byte_length_zero_means_256_blocks(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    data = os.urandom(256 * 512)
    assert run(lu, bytes([0x0A, 0, 0, 0, 0, 0]), data).status == Status.GOOD
    result = run(lu, bytes([0x08, 0, 0, 0, 0, 0]))
    assert bytes(result.data) == data


def test_zero_length_transfers_are_a_no_op_after_the_lba_check(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    n = lu.num_blocks
    assert run(lu, read10(0, 0)).data is None
    assert run(lu, write10(n, 0)).status == Status.GOOD
    assert sense_of(run(lu, write10(n + 1, 0))) == (0x05, 0x21, 0x00)
    assert sense_of(run(lu, cdb16(0x88, 2**63, 0))) == (0x05, 0x21, 0x00)


def test_lba_out_of_range_exact_sense(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    n = lu.num_blocks
    for cdb in (read10(n - 1, 2), cdb16(0x88, 2**64 - 1, 1), write10(n, 1)):
        result = run(lu, cdb, bytes(1024))
        assert result.status == Status.CHECK_CONDITION
        assert result.sense == LBA_OUT_OF_RANGE_SENSE


def test_transfer_above_block_limits_is_invalid_field(tmp_path: Path) -> None:
    lu = make_lu(tmp_path, size=64 * 1024 * 1024)
    result = run(lu, cdb16(0x88, 0, lu.max_transfer_blocks + 1))
    assert sense_of(result) == (0x05, 0x24, 0x00)
    assert result.sense[15:18] == bytes([0xC0, 0, 10])  # field pointer: the length
    assert run(lu, cdb16(0x88, 0, lu.max_transfer_blocks)).status == Status.GOOD


def test_protection_fields_are_refused(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    for cdb in (read10(0, 1, 0x20), write10(0, 1, 0x40), cdb16(0x8F, 0, 1, 0x20)):
        result = run(lu, cdb, bytes(512))
        assert sense_of(result) == (0x05, 0x24, 0x00)
        assert result.sense[15:18] == bytes([0xCF, 0, 1])  # byte 1, bit 7


def test_read_only_lu_refuses_every_write(tmp_path: Path) -> None:
    lu = make_lu(tmp_path, read_only=True)
    assert lu.mode_device_specific() == 0x90
    block = bytes(512)
    for cdb, data in [
        (write10(0, 1), block),
        (bytes([0x0A, 0, 0, 0, 1, 0]), block),
        (cdb16(0x8A, 0, 1), block),
        (cdb10(0x2E, 0, 1, 0x02), block),
        (cdb16(0x8B, 0, 1), block),
        (cdb16(0x89, 0, 0)[:13] + b"\x01\x00\x00", block * 2),
        (cdb10(0x41, 0, 1, 0x08), block),
        (bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]), bytes(24)),
    ]:
        result = run(lu, cdb, data)
        assert result.sense == bytes(
            [0x70, 0, 0x07, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x27, 0, 0, 0, 0, 0]
        ), cdb.hex()
    assert run(lu, read10(0, 1)).status == Status.GOOD


def test_short_data_out_writes_the_whole_blocks_that_came(tmp_path: Path) -> None:
    """libiscsi's iSCSIResiduals tests: GOOD, overflow residual, the blocks that arrived."""
    lu = make_lu(tmp_path)
    run(lu, write10(0, 2), b"a" * 1024)
    result = run(lu, write10(0, 2), b"b" * 700)
    assert result.status == Status.GOOD
    assert result.data_out_used == 1024
    assert read_blocks(lu, 0, 2) == b"b" * 512 + b"a" * 512


def test_longer_data_out_writes_only_what_the_cdb_asks(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    result = run(lu, write10(0, 1), b"c" * 10000)
    assert result.status == Status.GOOD
    assert result.data_out_used == 512
    assert read_blocks(lu, 0, 2) == b"c" * 512 + bytes(512)
    assert run(lu, write10(0, 1), b"d" * 512).data_out_used is None


def test_fua_and_write_cache_off_force_stable_writes(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    seen: list[bool] = []
    real = lu.store.write

    async def spy(offset, data, *, fua=False):
        seen.append(fua)
        await real(offset, data, fua=fua)

    real_now = lu.write_now

    def spy_now(offset, data, fua):
        done = real_now(offset, data, fua)
        if done:  # written at once, without waiting: never a forced write
            seen.append(False)
        return done

    with mock.patch.object(lu.store, "write", spy), mock.patch.object(lu, "write_now", spy_now):
        run(lu, write10(0, 1, 0x08), bytes(512))
        run(lu, write10(0, 1), bytes(512))
        lu.write_cache = False
        run(lu, write10(0, 1), bytes(512))
    assert seen == [True, False, True]


def test_write_and_verify(tmp_path: Path) -> None:
    lu = make_lu(tmp_path, 4096)
    data = os.urandom(8192)
    for cdb in (cdb10(0x2E, 1, 2, 0x02), cdb12(0xAE, 1, 2), cdb16(0x8E, 1, 2, 0x02)):
        assert run(lu, cdb, data).status == Status.GOOD
        assert read_blocks(lu, 1, 2) == data
    assert sense_of(run(lu, cdb10(0x2E, 1, 2, 0x06), data)) == (0x05, 0x24, 0x00)


@pytest.mark.parametrize("block_size", [512, 4096])
def test_verify_bytchk(tmp_path: Path, block_size: int) -> None:
    lu = make_lu(tmp_path, block_size)
    data = bytearray(os.urandom(4 * block_size))
    run(lu, write10(8, 4), data)
    assert run(lu, cdb10(0x2F, 8, 4, 0x00)).status == Status.GOOD
    assert run(lu, cdb10(0x2F, 8, 4, 0x02), data).status == Status.GOOD
    bad = bytearray(data)
    bad[block_size + 7] ^= 0xFF
    result = run(lu, cdb16(0x8F, 8, 4, 0x02), bad)
    assert sense_of(result) == (0x0E, 0x1D, 0x00)
    assert result.sense[0] == 0xF0  # VALID: INFORMATION holds the offset
    assert struct.unpack(">I", result.sense[3:7])[0] == block_size + 7
    # BYTCHK 11b: one block compared with each block
    run(lu, write10(20, 3), b"\x5a" * (3 * block_size))
    assert run(lu, cdb12(0xAF, 20, 3, 0x06), b"\x5a" * block_size).status == Status.GOOD
    run(lu, write10(22, 1), b"\x5a" * 5 + b"\x00" * (block_size - 5))
    result = run(lu, cdb12(0xAF, 20, 3, 0x06), b"\x5a" * block_size)
    assert struct.unpack(">I", result.sense[3:7])[0] == 2 * block_size + 5
    assert sense_of(run(lu, cdb10(0x2F, 8, 1, 0x04), data)) == (0x05, 0x24, 0x00)
    assert sense_of(run(lu, cdb10(0x2F, lu.num_blocks, 1, 0x00))) == (0x05, 0x21, 0x00)


def caw(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, flags, lba, blocks, 0, 0)


@pytest.mark.parametrize("block_size", [512, 4096])
def test_compare_and_write(tmp_path: Path, block_size: int) -> None:
    lu = make_lu(tmp_path, block_size)
    old, new = b"A" * (2 * block_size), b"B" * (2 * block_size)
    run(lu, write10(4, 2), old)
    assert run(lu, caw(4, 2), old + new).status == Status.GOOD
    assert read_blocks(lu, 4, 2) == new
    wrong = bytearray(old)
    wrong[block_size + 3] = ord("Z")
    result = run(lu, caw(4, 2), bytes(wrong) + b"C" * (2 * block_size))
    assert sense_of(result) == (0x0E, 0x1D, 0x00)
    assert struct.unpack(">I", result.sense[3:7])[0] == 0  # differs already at byte 0
    assert read_blocks(lu, 4, 2) == new
    probe = bytearray(new)
    probe[block_size + 3] = ord("Z")
    result = run(lu, caw(4, 2), bytes(probe) + b"C" * (2 * block_size))
    assert struct.unpack(">I", result.sense[3:7])[0] == block_size + 3
    assert read_blocks(lu, 4, 2) == new
    # wrong Data-Out size, too many blocks, out of range
    assert sense_of(run(lu, caw(4, 1), new + new)) == (0x05, 0x0E, 0x03)
    assert sense_of(run(lu, caw(4, 1), new[:block_size])) == (0x05, 0x0E, 0x03)
    assert sense_of(run(lu, caw(lu.num_blocks, 1), new)) == (0x05, 0x21, 0x00)
    lu.max_compare_and_write_blocks = 1
    assert sense_of(run(lu, caw(4, 2), old + new)) == (0x05, 0x24, 0x00)


def test_compare_and_write_excludes_concurrent_writes(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    order: list[str] = []
    real_read = lu.store.read_into

    async def slow_read(offset, buf):
        order.append("caw-read")
        await asyncio.sleep(0.01)  # a write that arrives now must wait for the CAW
        await real_read(offset, buf)

    async def scenario() -> None:
        await lu.execute(ScsiCommand(write10(0, 1), 0, NEXUS, memoryview(b"A" * 512)))
        with mock.patch.object(lu.store, "read_into", slow_read):
            caw_task = asyncio.create_task(
                lu.execute(ScsiCommand(caw(0, 1), 0, NEXUS, memoryview(b"A" * 512 + b"B" * 512)))
            )
            await asyncio.sleep(0)
            write = await lu.execute(ScsiCommand(write10(0, 1), 0, NEXUS, memoryview(b"W" * 512)))
            order.append("write-done")
            assert (await caw_task).status == Status.GOOD
            assert write.status == Status.GOOD
        assert order == ["caw-read", "write-done"]
        buf = bytearray(512)
        await real_read(0, memoryview(buf))
        assert buf == b"W" * 512  # the write came after the CAW, not in its middle

    asyncio.run(scenario())


def test_orwrite(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    run(lu, write10(2, 1), b"\x0f" * 512)
    assert run(lu, cdb16(0x8B, 2, 1), b"\xf0" * 256 + b"\x01" * 256).status == Status.GOOD
    assert read_blocks(lu, 2, 1) == b"\xff" * 256 + b"\x0f" * 256
    assert sense_of(run(lu, cdb16(0x8B, lu.num_blocks, 1), bytes(512))) == (0x05, 0x21, 0x00)


def test_a_write_is_never_made_at_once_while_an_atomic_command_holds_the_gate(
    tmp_path: Path,
) -> None:
    lu = make_lu(tmp_path)
    data = memoryview(b"x" * 512)

    async def scenario() -> None:
        async with lu.exclusive(0, 512):  # what COMPARE AND WRITE holds while it runs
            assert lu.write_now(4096, data, False) is False
        assert lu.write_now(4096, data, True) is False  # FUA
        lu.write_cache = False
        assert lu.write_now(4096, data, False) is False
        lu.write_cache = True
        assert lu.write_now(4096, data, False) is True

    asyncio.run(scenario())
    assert read_blocks(lu, 8, 1) == b"x" * 512


def test_a_read_not_filled_at_once_is_read_whole_by_read_into(tmp_path: Path) -> None:
    # read_now may fill part of the buffer before it declines (RWF_NOWAIT reads what the
    # page cache has): the READ must still return every byte, from read_into.
    lu = make_lu(tmp_path)
    data = os.urandom(4096)
    run(lu, write10(0, 8), data)

    def partial(offset: int, buf: memoryview) -> bool:
        buf[:512] = b"\xee" * 512  # a stale half-read
        return False

    lu.read_now = partial
    assert read_blocks(lu, 0, 8) == data
