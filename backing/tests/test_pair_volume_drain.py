"""A pair attached to a volume waits for the host writes that began before it (drain),
including an unpaired volume's, which take a shorter path than a paired one's."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest

from backing.pairs import PairVolume, Role
from backing.tests.test_pair_engine import SIZE, MemoryStore


def test_drain_waits_for_a_write_begun_before_the_attach() -> None:
    async def main() -> None:
        store = MemoryStore(SIZE, random.Random(1))
        store.gate = asyncio.Event()
        volume = PairVolume("v", store)
        write = asyncio.ensure_future(volume.write(0, b"w" * 4096))
        await asyncio.sleep(0)  # the write is in flight, held by the store
        pair: Any = SimpleNamespace(name="p")
        volume.attach(pair, Role.SOURCE)
        drain = asyncio.ensure_future(volume.drain())
        await asyncio.sleep(0.01)
        assert not drain.done()
        store.gate.set()
        await write
        await asyncio.wait_for(drain, 1)
        assert bytes(store.data[:4096]) == b"w" * 4096

    asyncio.run(main())


def test_drain_does_not_wait_for_a_write_that_failed() -> None:
    async def main() -> None:
        volume = PairVolume("v", MemoryStore(SIZE, random.Random(1)))

        async def failing(offset: int, data: object, *, fua: bool = False) -> None:
            await asyncio.sleep(0)
            raise OSError("disk gone")

        volume.base.write = failing  # type: ignore[method-assign]
        write = asyncio.ensure_future(volume.write(0, b"w" * 512))
        await asyncio.sleep(0)
        volume.attach(SimpleNamespace(name="p"), Role.SOURCE)  # type: ignore[arg-type]
        with pytest.raises(OSError, match="disk gone"):
            await write
        await asyncio.wait_for(volume.drain(), 1)

    asyncio.run(main())
