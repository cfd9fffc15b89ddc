"""``targetctl pair wait``: exit statuses and the progress bar, against scripted answers; and
the daemon side of ``pair.wait`` (returns at SUSPENDED, at the state, or at its timeout)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from backing.pairs import PairManager, PairService, PairSettings, PairVolume, SuspendReason
from backing.sparse_file import SparseFile
from targetd import pair_cli
from targetd.admin import Admin
from targetd.config import default_config
from targetd.pair_admin import PairAdmin, parse_state

MiB = 1 << 20


def status(source: str, target: str, dirty: int = 0, reason: str = "NONE") -> dict[str, Any]:
    return {
        "name": "db",
        "source_state": source,
        "target_state": target,
        "dirty_chunks": dirty,
        "percent_in_sync": 100.0 * (64 - dirty) / 64,
        "copy_rate": 2.0 * MiB,
        "reason": reason,
    }


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_wait(
    monkeypatch: pytest.MonkeyPatch, answers: list[dict[str, Any]], *args: str
) -> tuple[int, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    def fake_call(args: Any, method: str, params: dict[str, Any] | None = None) -> Any:
        assert method == "pair.wait"
        sent.append(dict(params or {}))
        return answers.pop(0)

    monkeypatch.setattr(pair_cli, "call", fake_call)
    parser = argparse.ArgumentParser()
    pair_cli.add_commands(parser.add_subparsers())
    ns = parser.parse_args(["pair", "wait", "db", *args])
    return ns.run(ns), sent


def test_wait_draws_progress_on_a_tty_then_returns_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tty = Tty()
    monkeypatch.setattr(pair_cli.sys, "stderr", tty)
    answers = [
        {"reached": False, "status": status("SPLIT", "SPLIT-PENDING", 48)},
        {"reached": False, "status": status("SPLIT", "SPLIT-PENDING", 16)},
        {"reached": True, "status": status("SPLIT", "SPLIT")},
    ]
    code, sent = run_wait(monkeypatch, answers, "--state", "split")
    assert code == 0
    assert [s["timeout"] for s in sent] == [pair_cli.TTY_POLL] * 3
    assert sent[0]["state"] == "SPLIT"
    drawn = tty.getvalue()
    assert drawn.count("\r") == 2 and drawn.endswith("\n")
    assert "db SPLIT/SPLIT-PENDING [" + "#" * 7 + "-" * 23 + "]  25.0% 48 chunks left" in drawn
    assert "75.0% 16 chunks left     2.0 MiB/s" in drawn
    assert capsys.readouterr().out == "pair db: SPLIT/SPLIT\n"


def test_wait_on_a_suspended_pair_exits_4(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = [
        {"reached": False, "status": status("SUSPENDED", "SUSPENDED", 5, "TARGET_WRITE_ERROR")}
    ]
    code, sent = run_wait(monkeypatch, answers, "--state", "DUPLEX", "--json")
    assert code == 4
    assert sent[0]["timeout"] == pair_cli.MAX_WAIT  # not a tty: one long wait per request
    out, err = capsys.readouterr()
    assert json.loads(out)["reached"] is False
    assert "pair db is SUSPENDED (TARGET_WRITE_ERROR)" in err


def test_wait_gives_up_at_the_timeout_with_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = [{"reached": False, "status": status("DUPLEX-PENDING", "DUPLEX-PENDING", 9)}]
    code, sent = run_wait(monkeypatch, answers, "--state", "DUPLEX", "--timeout", "0")
    assert code == 3 and sent[0]["timeout"] == 0
    assert "timed out after 0 s; pair db is DUPLEX-PENDING/DUPLEX-PENDING" in (
        capsys.readouterr().err
    )


def test_parse_state_accepts_labels_and_names() -> None:
    assert parse_state("split-pending") is parse_state("SPLIT_PENDING")
    with pytest.raises(ValueError, match="one of SIMPLEX, DUPLEX-PENDING"):
        parse_state("PAIR")


def test_daemon_wait_returns_at_suspended_and_at_its_timeout(tmp_path: Path) -> None:
    async def go() -> None:
        manager = PairManager(tmp_path, PairSettings(chunk_size=64 << 10, copy_rate=1))
        src = PairVolume("t/lun0", SparseFile(tmp_path / "a", 4 * MiB))
        tgt = PairVolume("t/lun1", SparseFile(tmp_path / "b", 4 * MiB))
        manager.register_volume(src)
        manager.register_volume(tgt)
        await src.write(0, b"x" * MiB)
        admin = Admin()
        config = default_config(tmp_path)
        pairs = PairAdmin(PairService(manager), lambda: config, {}, lambda target: {})
        pairs.register(admin)
        await manager.create("db", "t/lun0", "t/lun1")
        r = await admin.call("pair.wait", {"name": "db", "state": "DUPLEX", "timeout": 0.05})
        assert r["reached"] is False and r["status"]["source_state"] == "DUPLEX-PENDING"
        waiting = asyncio.ensure_future(
            admin.call("pair.wait", {"name": "db", "state": "DUPLEX", "timeout": 5})
        )
        await asyncio.sleep(0.05)
        await manager.get("db").suspend(SuspendReason.OPERATOR)
        r = await asyncio.wait_for(waiting, 1)
        assert r["reached"] is False and r["status"]["reason"] == "OPERATOR"
        r = await admin.call("pair.wait", {"name": "db", "state": "suspended"})
        assert r["reached"] is True
        text = "\n".join(
            f"{f.name} {labels} {value}"
            for f in pairs.metric_families()
            for _, labels, value in f.samples
        )
        state = "{'pair': 'db', 'target': 't', 'side': 'source', 'state': 'SUSPENDED'}"
        assert f"targetd_pair_state {state} 1" in text
        assert "targetd_pair_dirty_chunks {'pair': 'db', 'target': 't'} 16" in text
        assert "targetd_pair_backlog_bytes {'pair': 'db', 'target': 't'} 1048576" in text
        await manager.stop()

    asyncio.run(go())
