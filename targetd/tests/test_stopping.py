"""The bounded stop (targetd/stopping.py): past its bound it says what it still waits for."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from targetd import logs
from targetd import stopping as stopping_module
from targetd.luns import flush_targets
from targetd.stopping import Stopping, at_risk


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


def rbd_lu(cache: str, gateway: bool = True) -> SimpleNamespace:
    """An LU as the stop sees it: its store's cache mode, its gateway's stop."""
    gate = SimpleNamespace(stop=lambda: None) if gateway else SimpleNamespace()
    return SimpleNamespace(store=SimpleNamespace(spec=SimpleNamespace(cache=cache)),
                           access_gate=gate)  # fmt: skip


def test_a_cache_none_lus_step_is_given_up_and_its_later_steps_are_not_tried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stopping_module, "CLUSTER_SECONDS", 0.05)
    tried: list[str] = []

    async def hangs() -> None:
        tried.append("flush")
        await asyncio.sleep(10)

    async def later() -> None:
        tried.append("lock release")

    async def run() -> tuple[bool, bool, dict[str, str], dict[str, str]]:
        stopping = Stopping()
        lu = rbd_lu("none")
        first = await stopping.step("iqn.x:t/lun0", lu, "flush", hangs())
        second = await stopping.step("iqn.x:t/lun0", lu, "lock release", later())
        return first, second, stopping.left, stopping.pending

    with caplog.at_level(logging.WARNING, logger="targetd"):
        assert asyncio.run(run()) == (False, False, {"iqn.x:t/lun0": "flush"}, {})
    assert tried == ["flush"]
    [record] = [r for r in caplog.records if r.getMessage() == "cluster work not done at stop"]
    fields = getattr(record, logs.FIELDS)
    assert fields["not_done"] == "flush, lock release, close"
    assert fields["at_risk"] == stopping_module.NOTHING_AT_RISK


def test_a_write_back_lus_flush_is_waited_for_past_the_cluster_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stopping_module, "CLUSTER_SECONDS", 0.05)

    async def run() -> tuple[list[bool], dict[str, str]]:
        stopping = Stopping()
        lus = {"wb": rbd_lu("writeback"), "wa": rbd_lu("writearound"),
               "file": SimpleNamespace(store=object())}  # fmt: skip
        ended = [await stopping.step(n, lu, "flush", asyncio.sleep(0.2)) for n, lu in lus.items()]
        return ended, stopping.left

    assert asyncio.run(run()) == ([True, True, True], {})


def test_what_is_at_risk_follows_the_cache_mode() -> None:
    assert at_risk(rbd_lu("none")) == stopping_module.NOTHING_AT_RISK
    assert at_risk(rbd_lu("writeback")) == (
        "writes acknowledged from librbd's cache (cache writeback) and not flushed since the"
        " last SYNCHRONIZE CACHE or FUA write"
    )
    assert at_risk(SimpleNamespace(store=object())) is None
    # A pair's volume: its base image's mode.
    paired = SimpleNamespace(store=SimpleNamespace(base=SimpleNamespace(spec=SimpleNamespace(
        cache="writearound"))))  # fmt: skip
    assert at_risk(paired) is not None and "cache writearound" in at_risk(paired)  # type: ignore[operator]


def test_a_write_back_lu_flushed_at_the_stop_has_nothing_at_risk_when_its_close_hangs() -> None:
    async def run() -> tuple[bool, str]:
        stopping = Stopping()
        lu = rbd_lu("writeback")
        await stopping.step("wb", lu, "flush", asyncio.sleep(0))
        closing = asyncio.ensure_future(stopping.step("wb", lu, "close", asyncio.sleep(10)))
        ended = await stopping.run(closing, 0.2)
        return ended, stopping.at_risk["wb"]

    assert asyncio.run(run()) == (False, stopping_module.FLUSHED)


def test_a_failed_flush_fails_the_stop_only_where_acknowledged_writes_depended_on_it() -> None:
    async def refused() -> None:
        raise OSError(108, "flush of rbd:rbd/img failed: ESHUTDOWN")

    def lu(cache: str | None) -> SimpleNamespace:
        store = SimpleNamespace(spec=SimpleNamespace(cache=cache)) if cache else object()
        return SimpleNamespace(store=store, flush=refused,
                               identity=SimpleNamespace(device_id=f"iqn.x:t/{cache}"))  # fmt: skip

    def failures(*caches: str | None) -> int:
        target = SimpleNamespace(luns={n: lu(c) for n, c in enumerate(caches)})
        return asyncio.run(flush_targets({"iqn.x:t": target}))  # type: ignore[dict-item]

    assert failures("none") == 0
    assert failures("writeback") == 1
    assert failures(None) == 1  # a file LUN
    assert failures("none", "writearound", None) == 2
