"""The bounded stop (targetd/stopping.py): past its bound it says what it still waits for."""

from __future__ import annotations

import asyncio

from targetd.stopping import Stopping


def test_a_stop_within_its_bound_ends_and_one_past_it_names_what_it_waits_for() -> None:
    async def run() -> tuple[bool, bool, str]:
        quick = await Stopping().run(asyncio.sleep(0.01), 5.0)
        stopping = Stopping()
        stopping.stage = "closing LUNs"
        stopping.pending["iqn.x:t/lun1"] = "close"
        stopping.pending["iqn.x:t/lun0"] = "flush"
        slow = await stopping.run(asyncio.sleep(5.0), 0.1)
        return quick, slow, stopping.describe()

    assert asyncio.run(run()) == (
        True,
        False,
        "closing LUNs: flush of iqn.x:t/lun0, close of iqn.x:t/lun1",
    )


def test_the_bound_counts_from_the_stop_not_from_each_stage() -> None:
    async def run() -> bool:
        stopping = Stopping()
        stopping.started -= 10.0  # the drain took 10 s already
        return await stopping.run(asyncio.sleep(0.5), 10.2)

    assert asyncio.run(run()) is False
