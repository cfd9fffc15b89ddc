"""A copy to or from a stream LU waits on the disk on the LU's I/O thread (or the kernel copy
threads), never on the event loop: records, padding, the cut at the head, restores."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers_xcopy import cscd, extended_copy, make_target, ready
from xcopy_lists import lid1, seg_b2s, seg_s2b

GOOD = 0


def test_tape_records_of_a_copy_are_written_and_read_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make_target(tmp_path)
    ready(t)
    a, b, tape = t.luns[0], t.luns[1], t.luns[2]
    tape.image.append_record(b"old")  # the head at 0: the backup cuts it away first
    tape_fd = tape.image._fd
    calls: list[tuple[str, int]] = []
    for name in ("pwritev", "pwrite", "pread", "ftruncate", "fdatasync"):
        real = getattr(os, name)

        def spy(fd: int, *args: Any, real: Any = real, name: str = name) -> Any:
            if fd == tape_fd:
                calls.append((name, threading.get_ident()))
            return real(fd, *args)

        monkeypatch.setattr(os, name, spy)

    async def main() -> int:
        image = os.urandom(512 * 1024)
        await a.store.write(0, image)
        # Fixed 64 KiB records with padding: the records go through the engine's own
        # reads and appends (not the kernel copy).
        fixed = cscd(tape, device_type=1, block_length=64 * 1024, fixed=True, pad=True)
        r = await extended_copy(t, lid1([cscd(a), fixed], [seg_b2s(0, 1, 8, 1000, 0)]))
        assert (r.status, r.sense) == (GOOD, None)
        tape.position = 0
        restore = lid1([fixed, cscd(b)], [seg_s2b(0, 1, 8, 1000, 0)])
        r = await extended_copy(t, restore)
        assert (r.status, r.sense) == (GOOD, None)
        buf = bytearray(1000 * 512)
        await b.store.read_into(0, memoryview(buf))
        assert bytes(buf) == image[: len(buf)]
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert {"pwritev", "pread", "ftruncate"} <= {name for name, _ in calls}
    assert [name for name, thread in calls if thread == loop_thread] == []
