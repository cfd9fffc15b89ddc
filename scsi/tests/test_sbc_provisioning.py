"""Thin provisioning on a BlockDevice: UNMAP and its parameter-list checks, WRITE SAME
(with UNMAP, NDOB, to the end of the medium), GET LBA STATUS from the file's holes."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from test_sbc_support import cdb10, cdb16, make_lu, read_blocks, run, sense_of, write10

from scsi.command import Status
from scsi.sbc_provisioning import merged_ranges


def unmap_cdb(length: int, anchor: bool = False) -> bytes:
    return bytes([0x42, int(anchor), 0, 0, 0, 0, 0]) + length.to_bytes(2, "big") + b"\0"


def unmap_list(*ranges: tuple[int, int]) -> bytes:
    descriptors = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    return struct.pack(">HH4x", len(descriptors) + 6, len(descriptors)) + descriptors


def lba_status_cdb(lba: int, allocation: int = 1024) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x12, lba, allocation, 0, 0)


def lba_status(lu, lba: int, allocation: int = 1024) -> list[tuple[int, int, int]]:
    result = run(lu, lba_status_cdb(lba, allocation))
    assert result.status == Status.GOOD
    data = bytes(result.data)
    length = struct.unpack(">I", data[:4])[0]
    assert length == len(data) - 4
    return [struct.unpack(">QIB3x", data[i : i + 16]) for i in range(8, len(data), 16)]


@pytest.mark.parametrize("block_size", [512, 4096])
def test_unmap_then_lba_status_and_zero_reads(tmp_path: Path, block_size: int) -> None:
    lu = make_lu(tmp_path, block_size)
    per_page = 4096 // block_size
    blocks = 64 * per_page  # 256 KiB
    run(lu, write10(0, blocks), b"a" * (blocks * block_size))
    assert lba_status(lu, 0)[0] == (0, blocks, 0)
    params = unmap_list((8 * per_page, 8 * per_page), (32 * per_page, 4 * per_page))
    result = run(lu, unmap_cdb(len(params)), params)
    assert result.status == Status.GOOD
    assert read_blocks(lu, 8 * per_page, 8 * per_page) == bytes(8 * 4096)
    assert read_blocks(lu, 8 * per_page - 1, 1) == b"a" * block_size
    assert lba_status(lu, 0)[:5] == [
        (0, 8 * per_page, 0),
        (8 * per_page, 8 * per_page, 1),
        (16 * per_page, 16 * per_page, 0),
        (32 * per_page, 4 * per_page, 1),
        (36 * per_page, 28 * per_page, 0),
    ]
    # the first descriptor starts at the LBA asked for, and the rest of the LU is a hole
    assert lba_status(lu, 9 * per_page)[0] == (9 * per_page, 7 * per_page, 1)
    assert lba_status(lu, blocks)[0] == (blocks, lu.num_blocks - blocks, 1)


def test_get_lba_status_limits(tmp_path: Path) -> None:
    lu = make_lu(tmp_path, 4096)
    for i in range(0, 16, 2):
        run(lu, write10(i, 1), b"x" * 4096)
    assert len(lba_status(lu, 0, 8 + 3 * 16)) == 3  # as many as the allocation holds
    assert len(lba_status(lu, 0, 24)) == 1
    result = run(lu, lba_status_cdb(0, 4))
    assert bytes(result.data) == (4 + 16).to_bytes(4, "big")  # one descriptor's length
    for lba in (lu.num_blocks, 2**63, 2**64 - 1):
        assert sense_of(run(lu, lba_status_cdb(lba))) == (0x05, 0x21, 0x00)
    assert lba_status(lu, lu.num_blocks - 1) == [(lu.num_blocks - 1, 1, 1)]


def test_unmap_parameter_list_checks(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    n = lu.num_blocks
    assert run(lu, unmap_cdb(0)).status == Status.GOOD
    empty = unmap_list()
    assert run(lu, unmap_cdb(len(empty)), empty).status == Status.GOOD
    zero_at_end = unmap_list((n, 0))
    assert run(lu, unmap_cdb(len(zero_at_end)), zero_at_end).status == Status.GOOD
    assert sense_of(run(lu, unmap_cdb(6), bytes(6))) == (0x05, 0x1A, 0x00)
    beyond = unmap_list((n - 1, 2))
    assert sense_of(run(lu, unmap_cdb(len(beyond)), beyond)) == (0x05, 0x21, 0x00)
    too_many = unmap_list(*[(i, 1) for i in range(lu.max_unmap_descriptors + 1)])
    result = run(lu, unmap_cdb(len(too_many)), too_many)
    assert sense_of(result) == (0x05, 0x26, 0x00)
    assert result.sense[15:18] == bytes([0x80, 0, 2])  # parameter list byte 2
    lu.max_unmap_blocks = 8
    big = unmap_list((0, 4), (100, 5))
    result = run(lu, unmap_cdb(len(big)), big)
    assert sense_of(result) == (0x05, 0x26, 0x00)
    assert result.sense[15:18] == bytes([0x80, 0, 8 + 16 + 8])
    lying = unmap_list((0, 1))[:2] + b"\x00\x20" + unmap_list((0, 1))[4:]
    assert sense_of(run(lu, unmap_cdb(len(lying)), lying)) == (0x05, 0x26, 0x00)
    assert sense_of(run(lu, unmap_cdb(24, anchor=True), unmap_list((0, 1)))) == (5, 0x24, 0)
    short = unmap_list((0, 1))
    assert sense_of(run(lu, unmap_cdb(len(short)), short[:10])) == (0x05, 0x0E, 0x03)


def test_merged_ranges_join_adjacent_and_overlapping_descriptors() -> None:
    assert merged_ranges([]) == []
    assert merged_ranges([(i, 1) for i in range(256)]) == [(0, 256)]
    assert merged_ranges([(10, 2), (0, 4), (4, 1), (11, 5), (20, 1)]) == [(0, 5), (10, 6), (20, 1)]
    assert merged_ranges([(0, 8), (2, 2), (9, 1)]) == [(0, 8), (9, 1)]  # inside; a gap of one


def test_unmap_of_adjacent_descriptors_deallocates_once(tmp_path: Path) -> None:
    """One-block descriptors in a row, in any order (libiscsi's Unmap.Simple sends up to
    256), are one deallocation: on an RBD LU each was a discard sent to the cluster,
    32,896 of them in that test."""
    lu = make_lu(tmp_path, 4096)
    run(lu, write10(0, 300), b"u" * 300 * 4096)
    calls: list[tuple[int, int]] = []
    deallocate = lu.deallocate

    async def counted(offset: int, length: int, *, punch: bool) -> None:
        calls.append((offset, length))
        await deallocate(offset, length, punch=punch)

    lu.deallocate = counted  # type: ignore[method-assign]
    params = unmap_list(*[(i, 1) for i in reversed(range(255))], (290, 2))
    assert run(lu, unmap_cdb(len(params)), params).status == Status.GOOD
    assert calls == [(0, 255 * 4096), (290 * 4096, 2 * 4096)]
    assert read_blocks(lu, 0, 255) == bytes(255 * 4096)
    assert read_blocks(lu, 255, 35) == b"u" * 35 * 4096
    assert read_blocks(lu, 290, 2) == bytes(2 * 4096)


def test_failed_unmap_unmaps_nothing(tmp_path: Path) -> None:
    lu = make_lu(tmp_path, 4096)
    run(lu, write10(0, 4), b"k" * 4 * 4096)
    params = unmap_list((0, 2), (lu.num_blocks, 1))
    assert sense_of(run(lu, unmap_cdb(len(params)), params)) == (0x05, 0x21, 0x00)
    assert read_blocks(lu, 0, 4) == b"k" * 4 * 4096


@pytest.mark.parametrize("block_size", [512, 4096])
def test_write_same(tmp_path: Path, block_size: int) -> None:
    lu = make_lu(tmp_path, block_size)
    block = os.urandom(block_size)
    assert run(lu, cdb10(0x41, 3, 300), block).status == Status.GOOD
    assert read_blocks(lu, 3, 300) == block * 300
    assert read_blocks(lu, 303, 1) == bytes(block_size)
    # zeros with UNMAP deallocate; without, the range still reads as zeros
    per_page = 4096 // block_size
    run(lu, write10(0, 64 * per_page), b"q" * 64 * 4096)
    zero = bytes(block_size)
    assert run(lu, cdb16(0x93, 8 * per_page, 8 * per_page, 0x08), zero).status == Status.GOOD
    assert read_blocks(lu, 8 * per_page, 8 * per_page) == bytes(8 * 4096)
    assert lba_status(lu, 8 * per_page)[0] == (8 * per_page, 8 * per_page, 1)
    assert run(lu, cdb10(0x41, 20 * per_page, per_page), zero).status == Status.GOOD
    assert read_blocks(lu, 20 * per_page, per_page) == bytes(4096)
    # UNMAP deallocates whatever the block holds (libiscsi WriteSame10.UnmapUntilEnd, LIO)
    run(lu, cdb10(0x41, 40 * per_page, 2), block)
    assert run(lu, cdb10(0x41, 40 * per_page, 2, 0x08), block).status == Status.GOOD
    assert read_blocks(lu, 40 * per_page, 2) == bytes(2 * block_size)
    # NDOB: no Data-Out, zeros
    assert run(lu, cdb16(0x93, 0, per_page, 0x09)).status == Status.GOOD
    assert read_blocks(lu, 0, per_page) == bytes(4096)
    assert lba_status(lu, 0)[0] == (0, per_page, 1)


def test_write_same_zero_blocks_runs_to_the_end(tmp_path: Path) -> None:
    lu = make_lu(tmp_path, 4096)
    n = lu.num_blocks
    run(lu, write10(n - 8, 8), b"e" * 8 * 4096)
    assert run(lu, cdb10(0x41, n - 4, 0, 0x08), bytes(4096)).status == Status.GOOD
    assert read_blocks(lu, n - 8, 8) == b"e" * 4 * 4096 + bytes(4 * 4096)
    assert lba_status(lu, n - 8) == [(n - 8, 4, 0), (n - 4, 4, 1)]
    assert sense_of(run(lu, cdb10(0x41, n + 1, 0), bytes(4096))) == (0x05, 0x21, 0x00)
    lu.max_write_same_blocks = 16
    result = run(lu, cdb16(0x93, 0, 0), bytes(4096))
    assert sense_of(result) == (0x05, 0x24, 0x00)
    assert result.sense[15:18] == bytes([0xC0, 0, 10])


def test_write_same_refusals(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    block = bytes(512)
    assert sense_of(run(lu, cdb10(0x41, 0, 1, 0x10), block)) == (0x05, 0x24, 0x00)  # ANCHOR
    assert sense_of(run(lu, cdb10(0x41, 0, 1, 0x20), block)) == (0x05, 0x24, 0x00)  # WRPROTECT
    assert sense_of(run(lu, cdb10(0x41, 0, 1, 0x08), block[:256])) == (0x05, 0x0E, 0x03)
    assert sense_of(run(lu, cdb10(0x41, 0, 1, 0x08), block * 2)) == (0x05, 0x0E, 0x03)
    assert sense_of(run(lu, cdb16(0x93, 0, 1, 0x01), block)) == (0x05, 0x0E, 0x03)  # NDOB
    assert sense_of(run(lu, cdb16(0x93, lu.num_blocks - 1, 2), block)) == (0x05, 0x21, 0x00)
