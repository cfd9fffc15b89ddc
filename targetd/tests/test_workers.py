"""Worker processes: the ``[server] workers`` setting, placement of targets, what a worker
serves, and how the portal merges its workers' status and metrics."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from targetd.config import ConfigError, parse_config
from targetd.metrics import Family
from targetd.reload import plan
from targetd.workers import Worker, merge_families, merge_status, place, worker_config

A, B, C = (f"iqn.2026-11.org.targetd:{n}" for n in "abc")


def config(workers: object = None, names: tuple[str, ...] = (A, B), **extra: Any):  # type: ignore[no-untyped-def]
    data: dict[str, Any] = {"target": [{"name": n, "lun": [{"lun": 0}]} for n in names]}
    if workers is not None:
        data["server"] = {"workers": workers}
    data.update(extra)
    return parse_config(data, base_dir=Path("/cfg"), state_dir=Path("/s"))


def test_workers_default_to_one_and_take_a_count_or_auto() -> None:
    assert config().workers == 1
    assert config(2).workers == 2
    cpus = len(os.sched_getaffinity(0))
    assert config("auto").workers == min(2, cpus)  # never more than there are targets
    assert config("auto", names=(A,)).workers == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "server.workers: must be 1..256, got 0"),
        (257, "server.workers: must be 1..256, got 257"),
        ("two", "server.workers: expected a count or \"auto\", got 'two'"),
        (True, 'server.workers: expected a count or "auto", got True'),
    ],
)
def test_bad_worker_counts_name_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(value)
    assert str(err.value) == message


def test_unknown_key_in_server_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"server\.threads"):
        parse_config(
            {"server": {"threads": 2}, "target": [{"name": A}]},
            base_dir=Path("/cfg"),
            state_dir=Path("/s"),
        )


def test_targets_spread_evenly_and_keep_their_worker_across_a_reload() -> None:
    four = config(2, names=(A, B, C, "iqn.2026-11.org.targetd:d"))
    assert list(place(four).values()) == [0, 1, 0, 1]
    # B went away: C (new) takes the worker with fewer targets, A stays where it was.
    placed = place(config(2, names=(A, C)), {A: 0, B: 1})
    assert placed == {A: 0, C: 1}


def test_a_worker_serves_its_targets_on_ports_the_kernel_picks() -> None:
    full = config(2, portal=[{"listen": "127.0.0.1:3260"}, {"listen": "0.0.0.0:3270", "tpgt": 2}])
    mine = worker_config(full, [B])
    assert [t.name for t in mine.targets] == [B]
    assert [(p.listen_host, p.listen_port, p.advertised, p.tpgt) for p in mine.portals] == [
        ("127.0.0.1", 0, "127.0.0.1:3260", 1),
        ("0.0.0.0", 0, "0.0.0.0:3270", 2),
    ]
    assert (mine.workers, mine.metrics_listen) == (1, None)


def test_changing_the_worker_count_needs_a_restart() -> None:
    result = plan(config(2), config(3))
    assert result.refused == ["workers changed: needs a restart"]
    assert result.config.workers == 2


def test_status_and_metrics_of_the_workers_are_merged_and_labelled() -> None:
    workers = [Worker(0, [A], ports=[4000]), Worker(1, [B])]
    own: dict[str, Any] = {"sessions": [{"tsih": 1, "target": None}], "luns": [{"x": 1}]}
    answers: list[Any] = [
        {"sessions": [{"tsih": 1, "target": A}], "luns": [{"target": A}], "pairs": []},
        TimeoutError("worker 1 is restarting"),
    ]
    merge_status(own, workers, answers)
    assert own["sessions"] == [{"tsih": 1, "target": None}, {"tsih": 1, "target": A, "worker": 0}]
    assert own["luns"] == [{"target": A, "worker": 0}]
    assert [(w["index"], w["state"], w["ports"]) for w in own["workers"]] == [
        (0, "serving", [4000]),
        (1, "starting", []),
    ]
    lag = Family("targetd_event_loop_lag_seconds_count", "counter", "probes")
    lag.add(3)
    families = merge_families(
        [lag],
        workers,
        [[["targetd_event_loop_lag_seconds_count", "counter", "probes", [["", {}, 5]]]], []],
    )
    assert families[0].samples == [("", {}, 3), ("", {"worker": "0"}, 5)]


def test_a_workers_pair_manager_leaves_other_targets_pair_files_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from urllib.parse import quote

    from backing.pairs import PairManager

    for scope in (A, B):
        folder = tmp_path / "pairs" / quote(scope, safe="")
        folder.mkdir(parents=True)
        (folder / "p.pair").write_bytes(b"not a pair file")
    asyncio.run(PairManager(tmp_path, scopes=frozenset([A])).start())
    unreadable = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(unreadable) == 1 and quote(A, safe="") in unreadable[0]


def test_workers_on_the_command_line_win_over_the_file(tmp_path: Path) -> None:
    import argparse

    from targetd.cli import _load

    path = tmp_path / "t.toml"
    path.write_text(
        "[server]\nworkers = 2\n"
        + "".join(f'[[target]]\nname = "{n}"\n[[target.lun]]\nlun = 0\n' for n in (A, B, C))
    )

    def load(workers: str | None) -> int:
        args = argparse.Namespace(
            config=str(path), state_dir=str(tmp_path), listen=None, workers=workers, metrics=None
        )
        return _load(args).workers

    assert load(None) == 2
    assert load("3") == 3
    assert load("1") == 1
    assert load("auto") == min(3, len(os.sched_getaffinity(0)))
    with pytest.raises(ConfigError, match=r"--workers: must be 1\.\.256, got 0"):
        load("0")


def test_progress_lines_of_a_forwarded_request_pass_through_as_they_come(tmp_path: Path) -> None:
    """A long request the portal hands to a worker (an export with progress) streams its
    progress lines to the client while the work goes on, not only with the answer."""
    from targetd.admin import Admin, request
    from targetd.portal import Portal

    async def scenario() -> None:
        release = asyncio.Event()

        async def copy(params: dict[str, Any], report: Any) -> dict[str, Any]:
            report(0, 10)
            await release.wait()  # the work goes on until the client saw the first line
            report(10, 10)
            return {"copied": params["barcode"]}

        worker = Admin()
        worker.register("library.export", copy, progress=True)
        await worker.start(tmp_path / "worker0.sock")
        cfg = parse_config(
            {"target": [{"name": A, "lun": [{"lun": 0}]}], "server": {"workers": 2}},
            base_dir=tmp_path, state_dir=tmp_path,
        )  # fmt: skip
        portal = Portal(cfg, [], None)
        portal.supervisor.workers[0].ports = [3261]  # serving (no process in this test)
        await portal.admin.start(tmp_path / "admin.sock")
        seen: list[tuple[int, int]] = []
        first = asyncio.Event()
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            seen.append((done, total))
            loop.call_soon_threadsafe(first.set)

        try:
            answer = asyncio.ensure_future(
                asyncio.to_thread(
                    request, tmp_path / "admin.sock", "library.export", {"barcode": "X1"},
                    timeout=10, progress=progress,
                )
            )  # fmt: skip
            await asyncio.wait_for(first.wait(), 10)
            assert seen == [(0, 10)] and not answer.done()
            release.set()
            assert await asyncio.wait_for(answer, 10) == {"copied": "X1"}
            assert seen == [(0, 10), (10, 10)]
            # Without the flag, the request is answered as before, with no progress line.
            assert await asyncio.to_thread(
                request, tmp_path / "admin.sock", "library.export", {"barcode": "X2"}
            ) == {"copied": "X2"}
        finally:
            release.set()
            await portal.admin.stop()
            await worker.stop()

    asyncio.run(scenario())


def test_status_shows_a_spare_worker_and_why_one_is_down() -> None:
    from targetd.status import render

    spare = Worker(0, [], ports=[4000])
    down = Worker(1, [B], restarts=3, start_failures=3, waiting="failed")
    down.error = "exited with status 2 before serving"
    down.retry_at = time.monotonic() + 4.9
    text = render(
        {
            "daemon": {"pid": 1, "uptime_seconds": 5, "state_dir": "/s"},
            "portals": [],
            "workers": [spare.status(), down.status()],
            "sessions": [],
            "luns": [],
        }
    )
    assert "  worker 0 pid None (serving, 0 restarts): ports 4000, targets - (a spare" in text
    assert f"  worker 1 pid None (failed, 3 restarts): ports -, targets {B}\n" in text
    assert "    down: exited with status 2 before serving; next start in 4.9s\n" in text


def test_a_request_for_a_worker_that_cannot_start_says_why() -> None:
    from targetd.admin import AdminError
    from targetd.workers import Supervisor

    supervisor = Supervisor([], config(2))
    down = supervisor.workers[1]
    down.waiting, down.error = "failed", "exited with status 2 before serving"
    with pytest.raises(AdminError) as err:
        asyncio.run(supervisor.call(down, "pair.list", {}))
    assert (err.value.code, str(err.value)) == (
        "unavailable",
        "worker 1 cannot start (exited with status 2 before serving); it is tried again",
    )
    with pytest.raises(AdminError, match=r"^worker 0 is starting; try again$"):
        asyncio.run(supervisor.call(supervisor.workers[0], "pair.list", {}))


def test_a_worker_started_before_a_reload_and_admitted_after_it_gets_its_credentials(
    tmp_path: Path,
) -> None:
    """A worker is starting (spawned with the credentials of before) when a reload sends
    its requests: its own fails ("starting"). Before it is routed it is sent that reload,
    with the new credentials and its targets; a worker already up to date is sent nothing."""
    from targetd.admin import Admin
    from targetd.config_model import ChapSecret
    from targetd.workers import Supervisor, socket_name

    before = ChapSecret("alice", "first-secret-1")
    after = ChapSecret("alice", "second-secret")
    base = replace(config(2), state_dir=tmp_path)

    async def scenario() -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
        supervisor = Supervisor([], replace(base, env_chap=before))
        serving, starting = supervisor.workers
        serving.ports = [4000]  # up: its reload request reaches it
        received: list[list[dict[str, Any]]] = [[], []]
        admins = []
        for worker in supervisor.workers:
            admin = Admin()

            def reload_with(params: dict[str, Any], got: list[Any] = received[worker.index]):
                got.append(params)
                return {"applied": [], "refused": [], "targets": params["targets"], "luns": {}}

            admin.register("worker.reload", reload_with)
            await admin.start(tmp_path / socket_name(worker.index))
            admins.append(admin)
        try:
            result = await supervisor.assign(replace(base, env_chap=after))
            missed = list(received[1])
            await supervisor.catch_up(starting)  # its ready line came: before it is routed
            await supervisor.catch_up(serving)  # reached by the reload: nothing more
            return missed + received[1], result["refused"], received[0]
        finally:
            for admin in admins:
                await admin.stop()

    to_starting, refused, to_serving = asyncio.run(scenario())
    assert refused == ["worker 1: worker 1 is starting; try again"]
    assert to_starting == [{"chap": ["alice", "second-secret"], "targets": [B]}]
    assert to_serving == [{"chap": ["alice", "second-secret"], "targets": [A]}]
