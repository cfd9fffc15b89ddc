"""COPY OPERATION ABORT while a kernel copy runs on a copy thread: the abort answers only
once the thread's call has ended, so what the host sends next lands after the copy's last
bytes, never under them. Each test holds the copy thread inside its call until after the
abort was sent, then writes where the copy was writing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers_xcopy import cscd, extended_copy, make_target, ready, send
from xcopy_lists import lid4, rcr_cdb, seg_b2b, seg_b2s

from backing.tape_image import TapeImage
from scsi.kernel_file import KernelFile
from scsi.target import ScsiTarget

GOOD = 0
MiB = 1 << 20
RECORD = 2 * MiB  # two slices: the copy thread calls between() once inside a record
LIST_ID = 7


class HeldCall:
    """A blocking method whose first call waits (on the copy thread) until released; set
    ``method`` on the class in its place."""

    def __init__(self, original: Callable[..., None]) -> None:
        self.original = original
        self.entered = threading.Event()
        self.release = threading.Event()
        self.ended = threading.Event()

        def method(obj: object, *args: Any, **kwargs: Any) -> None:
            self(obj, *args, **kwargs)

        self.method = method

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
            try:
                self.original(*args, **kwargs)
            finally:
                self.ended.set()
            return
        self.original(*args, **kwargs)


def abort_cdb(list_id: int) -> bytes:
    return bytes([0x83, 0x1C]) + list_id.to_bytes(4, "big") + bytes(10)


async def abort_while_held(t: ScsiTarget, held: HeldCall, params: bytes) -> None:
    """Starts the IMMED list, waits until its copy thread is held, then sends COPY
    OPERATION ABORT; the thread is let go 0.3 s later, from another thread (the abort may
    not answer before)."""
    r = await extended_copy(t, params, sa=1)
    assert r.status == GOOD
    assert await asyncio.to_thread(held.entered.wait, 10)
    timer = threading.Timer(0.3, held.release.set)
    timer.start()
    try:
        r = await send(t, abort_cdb(LIST_ID))
        assert r.status == GOOD
    finally:
        timer.join()
    r = await send(t, rcr_cdb(0x05, LIST_ID))
    assert r.data[5] == 0x60  # aborted


def test_a_file_mark_after_the_abort_lands_after_the_record_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """targetd-copy's Ctrl-C: COPY OPERATION ABORT, then WRITE FILEMARKS to close the
    partial backup. Before, the abort answered while the record was still being copied, the
    file mark went where that record's header then went too, and the tape read back
    UNRECOVERED READ ERROR."""
    held = HeldCall(TapeImage.append_record_from)
    monkeypatch.setattr(TapeImage, "append_record_from", held.method)

    async def main() -> None:
        t = make_target(tmp_path, blocks=8 * MiB // 512)
        ready(t)
        a, tape = t.luns[0], t.luns[2]
        data = bytes(range(256)) * (4 * MiB // 256)
        r = await send(t, bytes([0x2A, 0, 0, 0, 0, 0, 0]) + (4 * MiB // 512).to_bytes(2, "big")
                       + bytes(1), data)  # fmt: skip
        assert r.status == GOOD
        blocks = RECORD // 512
        params = lid4(
            [cscd(a), cscd(tape, device_type=1, block_length=0)],
            [seg_b2s(0, 1, RECORD, blocks, lba) for lba in (0, blocks)],
            list_id=LIST_ID,
            immed=True,
        )
        await abort_while_held(t, held, params)
        r = await send(t, bytes([0x10, 0, 0, 0, 1, 0]), lun=2)  # WRITE FILEMARKS(6)
        assert r.status == GOOD
        assert await asyncio.to_thread(held.ended.wait, 10)
        await asyncio.sleep(0.1)
        assert [tape.image.length(i) for i in range(len(tape.image))] == [RECORD, None]
        tape.close()

    asyncio.run(main())
    again = TapeImage(tmp_path / "t.img", read_only=True)
    try:
        assert [again.length(i) for i in range(len(again))] == [RECORD, None]
        assert again.read(0) == bytes(range(256)) * (RECORD // 256)
    finally:
        again.close()


def test_a_host_write_after_the_abort_is_not_overwritten_by_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block-to-block copy aborted mid-chunk: a WRITE the host sends once the abort has
    answered keeps its data (before, the copy thread's bytes landed on top of it)."""
    held = HeldCall(KernelFile.copy_to)
    monkeypatch.setattr(KernelFile, "copy_to", held.method)

    async def main() -> None:
        t = make_target(tmp_path, blocks=8 * MiB // 512)
        ready(t)
        a, b = t.luns[0], t.luns[1]
        blocks = 4 * MiB // 512
        write10 = bytes([0x2A, 0, 0, 0, 0, 0, 0]) + blocks.to_bytes(2, "big") + bytes(1)
        assert (await send(t, write10, b"\xaa" * (4 * MiB))).status == GOOD
        params = lid4([cscd(a), cscd(b)], [seg_b2b(0, 1, blocks, 0, 0)], list_id=LIST_ID,
                      immed=True)  # fmt: skip
        await abort_while_held(t, held, params)
        host = b"\x55" * 65536
        write = bytes([0x2A, 0, 0, 0, 0, 0, 0]) + (65536 // 512).to_bytes(2, "big") + bytes(1)
        assert (await send(t, write, host, lun=1)).status == GOOD
        assert await asyncio.to_thread(held.ended.wait, 10)
        await asyncio.sleep(0.1)
        read = bytes([0x28, 0, 0, 0, 0, 0, 0]) + (65536 // 512).to_bytes(2, "big") + bytes(1)
        r = await send(t, read, lun=1)
        assert r.status == GOOD and bytes(r.data) == host

    asyncio.run(main())
